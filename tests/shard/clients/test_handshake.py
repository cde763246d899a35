"""
The shard's opening handshake as a client sees it and as the logs record
it: the subprotocol selected (auth on or off), and a client's token kept
out of the status line and out of every log line, at every level.
"""

from __future__ import annotations

import io
import json
import time
import zlib

import jwt
from twisted.internet.error import ConnectionDone
from twisted.logger import LogLevel, globalLogPublisher
from twisted.python.failure import Failure

from odin_ws.common import logs
from tests.helpers import (
    ShardClient,
    ShardTestCase,
    client_frame,
    parse_frames,
    sample,
    text,
)

SECRET = "s3cret-for-tests-only-0123456789abcdef"
KEY = "dGhlIHNhbXBsZSBub25jZQ=="

#: The answer to an offer without a window.
BOTH_NO_TAKEOVER = "permessage-deflate; server_no_context_takeover; client_no_context_takeover"


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
    """Auth on; log.level debug, and the process's own log observers (text, JSON, audit file)."""

    settings = {"auth.mode": "jwt", "auth.secret": SECRET, "log.level": "debug"}

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


class DebugLinesTests(ShardTestCase):
    """Autobahn's debug lines of each connection cost nothing below log.level debug."""

    def setUp(self):
        super().setUp()
        self.debug_events: list[dict] = []

        def observe(event: dict) -> None:
            if event.get("log_level") == LogLevel.debug:
                self.debug_events.append(event)
        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)

    def test_no_debug_event_at_info(self):
        """
        With the default log.level (info), a handshake and a subscribe emit
        no debug event at all: Autobahn's ~15 per connection are no-ops, not
        events filtered later (at log.level debug they come:
        L{TokenNotLoggedTests}).
        """
        reply = self.subscribe(self.connect(), "odin.token.1.trade")
        self.assertEqual(reply["type"], "subscribed")
        self.assertEqual(self.debug_events, [])


def extensions(client: ShardClient) -> str | None:
    """The Sec-WebSocket-Extensions the server answered with, if any."""
    _, response = answer(client)
    for line in response.split("\r\n"):
        name, _, value = line.partition(": ")
        if name.lower() == "sec-websocket-extensions":
            return value
    return None


class CompressionNegotiationTests(ShardTestCase):
    """permessage-deflate in the handshake (outbound.compression on, the default)."""

    settings = {"outbound.compression_min_bytes": 0}

    def offers(self) -> dict[str, int]:
        return dict(self.shard.stats.offers)

    def test_acceptedWithoutContextTakeover(self):
        """
        A browser's offer is accepted with server_no_context_takeover, the
        connection's events come compressed (RSV1) and decode alone; a reply
        comes uncompressed.
        """
        client = self.connect(headers=("Sec-WebSocket-Extensions: permessage-deflate; "
                                       "client_max_window_bits",))
        self.assertEqual(extensions(client), BOTH_NO_TAKEOVER)
        self.assertEqual(self.offers()["accepted"], 1)
        self.assertEqual(self.subscribe(client, "odin.token.t1.trade")["type"], "subscribed")
        envelope = self.publish("t1")
        data = client.transport.value()[client._read:]
        self.assertEqual(data[0], 0xC1)
        payload = data[2:] if data[1] < 126 else data[4:]
        inflated = zlib.decompressobj(-15).decompress(payload + b"\x00\x00\xff\xff")
        self.assertEqual(inflated, envelope)
        self.assertEqual(self.shard.stats.deflated, 1)

    def test_windowAskedForIsUsed(self):
        """server_max_window_bits=10 is answered and honoured: a 10-bit inflater reads the events."""
        client = self.connect(headers=("Sec-WebSocket-Extensions: permessage-deflate; "
                                       "server_max_window_bits=10",))
        self.assertEqual(extensions(client), "permessage-deflate; server_no_context_takeover; "
                                             "server_max_window_bits=10; client_no_context_takeover")
        self.assertEqual(client.proto.outbox.variant, 2)
        self.subscribe(client, "odin.token.t1.trade")
        envelope = self.publish("t1")
        data = client.transport.value()[client._read:]
        self.assertEqual(data[0], 0xC1)
        payload = data[2:] if data[1] < 126 else data[4:]
        self.assertEqual(zlib.decompressobj(-10).decompress(payload + b"\x00\x00\xff\xff"),
                         envelope)

    def test_offersItCannotHonourAreDeclined(self):
        """
        A window of 8, unknown or repeated parameters, a bad value: declined
        (RFC 7692, 5), not refused; the connection opens uncompressed, gets
        plain events, and each is counted as invalid.
        """
        bad = ("permessage-deflate; server_max_window_bits=8",
               "permessage-deflate; foo=1",
               "permessage-deflate; client_max_window_bits=9; client_max_window_bits=10",
               "permessage-deflate; server_max_window_bits=abc",
               "permessage-deflate; server_no_context_takeover=1")
        for offer in bad:
            client = self.connect(headers=(f"Sec-WebSocket-Extensions: {offer}",))
            self.assertIsNone(extensions(client), offer)
            self.assertEqual(client.proto.outbox.variant, 0)
        self.assertEqual(self.offers(), {"accepted": 0, "declined": 0, "invalid": len(bad)})
        self.subscribe(client, "odin.token.t1.trade")
        envelope = self.publish("t1")
        self.assertEqual(client.frames(), [(1, envelope)])

    def test_badOfferThenGoodOneTakesTheGoodOne(self):
        """Of two offers, the one it cannot honour is skipped and the next accepted."""
        client = self.connect(headers=("Sec-WebSocket-Extensions: permessage-deflate; "
                                       "server_max_window_bits=8, permessage-deflate",))
        self.assertEqual(extensions(client), BOTH_NO_TAKEOVER)
        self.assertEqual(self.offers(), {"accepted": 1, "declined": 0, "invalid": 1})

    def test_otherExtensionsIgnored(self):
        """An extension odinws does not know (or a bzip2 offer Autobahn knows) is not accepted."""
        client = self.connect(headers=("Sec-WebSocket-Extensions: x-webkit-foo, "
                                       "permessage-bzip2; server_max_compress_level=99",))
        self.assertIsNone(extensions(client))
        self.assertEqual(self.offers(), {"accepted": 0, "declined": 0, "invalid": 0})

    def test_headerTwiceRefused(self):
        """The extensions header sent twice is malformed: 400, as Autobahn answers it."""
        self.connect(headers=("Sec-WebSocket-Extensions: permessage-deflate",
                              "Sec-WebSocket-Extensions: permessage-deflate"), expect=400)

    def test_decompressionBombClosed1009(self):
        """
        A client's compressed message that inflates past limits.max_message_bytes
        is closed with 1009 (inflating stops there) and counted; others on
        the shard are unaffected.
        """
        other = self.connect()
        self.subscribe(other, "odin.token.t1.trade")
        client = self.connect(headers=("Sec-WebSocket-Extensions: permessage-deflate",))
        z = zlib.compressobj(9, zlib.DEFLATED, -15)
        bomb = z.compress(b" " * 10_000_000) + z.flush(zlib.Z_SYNC_FLUSH)
        bomb = bomb[:-4]
        self.assertLess(len(bomb), 16384)
        # The client never answers the close: dropped after the close timeout.
        labels = {"reason": "dropped", "code": "1009"}
        before = sample("odinws_connections_closed_total", **labels)
        client.send(client_frame(1, bomb, rsv1=True))
        frames = client.frames()
        self.assertEqual(frames[-1][0], 8)
        self.assertEqual(int.from_bytes(frames[-1][1][:2], "big"), 1009)
        self.advance(3)     # the close handshake's timeout: dropped
        self.assertTrue(client.lost)
        self.assertEqual(sample("odinws_connections_closed_total", **labels), before + 1)
        envelope = self.publish("t1")
        self.assertEqual(other.frames(), [(1, envelope)])

    def test_compressedSubscribeUnderstood(self):
        """
        A client's compressed subscribe is inflated and answered
        (uncompressed); the inflater is not kept past the message (the
        client was told to take no context over).
        """
        client = self.connect(headers=("Sec-WebSocket-Extensions: permessage-deflate",))
        z = zlib.compressobj(6, zlib.DEFLATED, -15)
        body = json.dumps({"type": "subscribe", "channels": ["odin.token.t1.trade"]}).encode()
        client.send(client_frame(1, (z.compress(body) + z.flush(zlib.Z_SYNC_FLUSH))[:-4],
                                 rsv1=True))
        [(opcode, reply)] = client.frames()
        self.assertEqual(json.loads(reply)["type"], "subscribed")
        self.assertIsNone(client.proto._perMessageCompress._decompressor)

    def test_snapshotGoesPlain(self):
        """
        A snapshot (per connection) reaches a compressing connection plain,
        while the live events after it come compressed.
        """
        envelope = self.publish("t1")
        client = self.connect(headers=("Sec-WebSocket-Extensions: permessage-deflate",))
        client.send(text({"type": "subscribe", "channels": ["odin.token.t1.trade"],
                          "snapshot": True}))
        raw = client.transport.value()[client._read:]
        [(_, ack), (_, snapshot)] = client.frames()
        self.assertEqual(json.loads(ack)["type"], "subscribed")
        self.assertTrue(json.loads(snapshot)["snapshot"])
        self.assertEqual(json.loads(snapshot)["data"], json.loads(envelope)["data"])
        self.assertEqual(raw[2 + len(ack)], 0x81)     # the snapshot's frame: no RSV1
        self.publish("t1")
        data = client.transport.value()[client._read:]
        self.assertEqual(data[0], 0xC1)

    def test_offDeclines(self):
        """With outbound.compression off, offers are declined (counted) and events go plain."""
        self.reload_shard(**{"outbound.compression": False})
        client = self.connect(headers=("Sec-WebSocket-Extensions: permessage-deflate",))
        self.assertIsNone(extensions(client))
        self.assertEqual(self.offers()["declined"], 1)
        self.subscribe(client, "odin.token.t1.trade")
        envelope = self.publish("t1")
        self.assertEqual(client.frames(), [(1, envelope)])
        self.assertEqual(self.shard.stats.deflated, 0)

    def test_closedConnectionLeavesTheVariant(self):
        """A compressed connection that closes no longer counts for its variant."""
        client = self.connect(headers=("Sec-WebSocket-Extensions: permessage-deflate",))
        self.assertEqual(self.shard.deflate.in_use(), [7])
        client.send(client_frame(8, b"\x03\xe8"))
        client.proto.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.shard.deflate.in_use(), [])
