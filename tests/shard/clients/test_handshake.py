"""
The shard's opening handshake as a client sees it and as the logs record
it: the subprotocol selected (auth on or off), and a client's token kept
out of the status line and out of every log line, at every level.
"""

from __future__ import annotations

import io
import json
import time

import jwt
from twisted.logger import globalLogPublisher

from odin_ws.common import logs
from tests.helpers import ShardClient, ShardTestCase, parse_frames, text

SECRET = "s3cret-for-tests-only-0123456789abcdef"
KEY = "dGhlIHNhbXBsZSBub25jZQ=="


def head(path: str = "/ws", *headers: str) -> bytes:
    lines = [f"GET {path} HTTP/1.1", "Host: node", "Upgrade: websocket", "Connection: Upgrade",
             f"Sec-WebSocket-Key: {KEY}", "Sec-WebSocket-Version: 13", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def answer(client: ShardClient) -> tuple[int, str]:
    """The status code and the head of the server's answer."""
    data = client.transport.value()
    response = data.partition(b"\r\n\r\n")[0].decode("latin-1")
    return int(response.split(" ", 2)[1]), response


class SubprotocolTests(ShardTestCase):
    """Auth off (the default)."""

    def test_odinws_selected_with_auth_off(self):
        """
        A client written for auth on offers "odinws" (and a bearer token):
        with auth off the server still selects "odinws", since a browser
        fails the handshake when it offered subprotocols and none is
        selected; a bearer subprotocol is never selected.
        """
        client = ShardClient(self.shard, "10.0.0.1")
        client.send(head("/ws", "Sec-WebSocket-Protocol: odinws, bearer.abc.def.ghi"))
        status, response = answer(client)
        self.assertEqual(status, 101)
        self.assertIn("Sec-WebSocket-Protocol: odinws\r\n", response + "\r\n")
        self.assertNotIn("bearer", response)
        client = ShardClient(self.shard, "10.0.0.1")
        client.send(head("/ws", "Sec-WebSocket-Protocol: bearer.abc.def.ghi"))
        status, response = answer(client)
        self.assertEqual(status, 101)
        self.assertNotIn("Sec-WebSocket-Protocol", response)


class TokenNotLoggedTests(ShardTestCase):
    """Auth on; the process's own log observers (text, JSON, audit file) at debug."""

    settings = {"auth.mode": "jwt", "auth.secret": SECRET}

    def setUp(self):
        super().setUp()
        self.text, self.json, self.audit_file = io.StringIO(), io.StringIO(), io.StringIO()
        for observer in (logs.make_observer("text", "debug", self.text,
                                            audit_out=self.audit_file, per_second=10000),
                         logs.make_observer("json", "debug", self.json, per_second=10000)):
            globalLogPublisher.addObserver(observer)
            self.addCleanup(globalLogPublisher.removeObserver, observer)

    def token(self, ttl: float = 300) -> str:
        return jwt.encode({"exp": time.time() + ttl, "channels": ["odin.token.*.*"]}, SECRET,
                          algorithm="HS256")

    def logged(self) -> str:
        return self.text.getvalue() + self.json.getvalue() + self.audit_file.getvalue()

    def test_no_token_in_any_log_at_debug(self):
        """
        Real handshakes with a token in each place a client may put one
        (Authorization header, ?token=, bearer. subprotocol, and that
        subprotocol offered twice, which Autobahn refuses quoting it),
        valid and expired (refused, audited), then a refresh message:
        with log.level debug, where Autobahn logs whole request heads,
        no token appears in the text, JSON or audit output, nor in any
        status line sent back. The debug lines are there, redacted.
        """
        tokens = []
        for ttl, expect in ((300, 101), (-100, 401)):
            for place in ("header", "query", "subprotocol", "twice"):
                token = self.token(ttl)
                tokens.append(token)
                path, headers = "/ws", ()
                if place == "header":
                    headers = (f"Authorization: Bearer {token}",)
                elif place == "query":
                    path = f"/ws?token={token}"
                elif place == "subprotocol":
                    headers = (f"Sec-WebSocket-Protocol: odinws, bearer.{token}",)
                else:
                    headers = (f"Sec-WebSocket-Protocol: odinws, bearer.{token}, "
                               f"bearer.{token}",)
                client = ShardClient(self.shard, "10.0.0.1")
                self.clients.append(client)
                client.send(head(path, *headers))
                status, response = answer(client)
                self.assertEqual(status, 400 if place == "twice" else expect, place)
                for part in token.split("."):
                    self.assertNotIn(part, response, place)
                if status == 101:
                    fresh = self.token()
                    tokens.append(fresh)
                    client.send(text({"type": "refresh", "token": fresh, "id": 1}))
                    [(_, reply)] = parse_frames(client.transport.value().partition(
                        b"\r\n\r\n")[2])
                    self.assertEqual(json.loads(reply)["type"], "refreshed")
        logged = self.logged()
        self.assertIn("received HTTP request", logged)     # Autobahn's debug lines came
        self.assertIn(logs.REDACTED, logged)
        self.assertIn("failing WebSocket opening handshake", logged)
        for token in tokens:
            self.assertNotIn(token, logged)
            for part in token.split("."):
                self.assertNotIn(part, logged)
        for line in self.json.getvalue().splitlines():
            json.loads(line)
