"""Tests for L{odin_ws.common.logs}: formats, levels, audit routing, flood guard."""

import io
import json

from twisted.internet.task import Clock
from twisted.logger import Logger, LogLevel
from twisted.trial import unittest

from odin_ws.common import logs


def emit(observer, level=LogLevel.info, namespace="odinws.test", fmt="hello {who}", **kw):
    Logger(namespace=namespace, observer=observer).emit(level, fmt, **kw)


class ObserverTests(unittest.TestCase):
    def test_json_lines(self):
        """log.format json writes one JSON object per line."""
        out = io.StringIO()
        obs = logs.make_observer("json", "info", out)
        emit(obs, who="a")
        emit(obs, who="b")
        self.assertNotIn("\x1e", out.getvalue())
        lines = out.getvalue().splitlines()
        self.assertEqual(len(lines), 2)
        self.assertEqual(json.loads(lines[0])["who"], "a")

    def test_text(self):
        """log.format text writes readable lines."""
        out = io.StringIO()
        emit(logs.make_observer("text", "info", out), who="world")
        self.assertIn("hello world", out.getvalue())

    def test_text_without_timestamps(self):
        """
        A shard's text lines carry no timestamp (the parent adds its own when
        it logs them): they start with the system; multi-line text stays
        one entry (continuation lines indented), as in Twisted's format.
        """
        out = io.StringIO()
        emit(logs.make_observer("text", "info", out, timestamps=False), fmt="a\nb {who}",
             who="x", log_system="shard")
        self.assertEqual(out.getvalue(), "[shard] a\n\tb x\n")
        timed = io.StringIO()
        emit(logs.make_observer("text", "info", timed), who="x", log_system="shard")
        self.assertRegex(timed.getvalue(), r"^\d{4}-\d\d-\d\dT\S+ \[shard\] hello x\n$")

    def test_level(self):
        """Events below log.level are dropped."""
        out = io.StringIO()
        obs = logs.make_observer("text", "warn", out)
        emit(obs, LogLevel.info, who="quiet")
        emit(obs, LogLevel.warn, who="loud")
        self.assertNotIn("quiet", out.getvalue())
        self.assertIn("loud", out.getvalue())

    def test_audit_routed(self):
        """Audit events also go to the audit file, as JSON; others do not."""
        out, audit = io.StringIO(), io.StringIO()
        obs = logs.make_observer("text", "info", out, audit_out=audit)
        emit(obs, namespace=logs.AUDIT_NAMESPACE, fmt="rejected {ip}", ip="127.0.0.9")
        emit(obs, who="other")
        self.assertIn("127.0.0.9", audit.getvalue())
        self.assertNotIn("other", audit.getvalue())
        self.assertIn("rejected 127.0.0.9", out.getvalue())


class FloodGuardTests(unittest.TestCase):
    def test_flood_summarised(self):
        """Past the per-second budget, lines are dropped and then summarised once."""
        seen = []
        clock = Clock()
        guard = logs.FloodGuard(seen.append, 3, clock.seconds)
        for i in range(10):
            emit(guard, who=i)
        emit(guard, fmt="different")
        self.assertEqual(len(seen), 4)
        clock.advance(1.5)
        emit(guard, who="next")
        self.assertEqual(seen[4]["n"], 7)
        self.assertEqual(seen[5]["who"], "next")


class RedactorTests(unittest.TestCase):
    JWT = "eyJhbGciOiJIUzI1NiJ9.eyJleHAiOjE3fQ.c2lnbmF0dXJl"

    def test_tokens_redacted_in_every_form(self):
        """
        A token is cut from a request head printed as bytes (Authorization,
        ?token=, bearer. subprotocol), from printed header and parameter
        dicts, and a JWT from anywhere; channel names and setting names
        that merely contain "token" are left alone; redacting is idempotent.
        """
        j = self.JWT
        cases = [
            f"b'GET /ws?token={j}&x=1 HTTP/1.1\\r\\nAuthorization: Bearer {j}\\r\\n"
            f"Sec-WebSocket-Protocol: odinws, bearer.{j}\\r\\n'",
            "{'authorization': 'Basic dXNlcjpwYXNz', 'sec-websocket-protocol': 'bearer.x.y'}",
            "{'token': ['not-a-jwt-but-secret']}",
            f"refused: {j} (expired)",
        ]
        for text in cases:
            redacted = logs.redact(text)
            for secret in (j, "dXNlcjpwYXNz", "bearer.x.y", "not-a-jwt-but-secret"):
                self.assertNotIn(secret, redacted)
            self.assertIn(logs.REDACTED, redacted)
            self.assertEqual(logs.redact(redacted), redacted)
        for plain in ("subscribed odin.token.ABC.trade", "auth.max_token_bytes=8192",
                      "kafka.token_field: key"):
            self.assertEqual(logs.redact(plain), plain)

    def test_fields_redacted_in_json_and_text(self):
        """
        An event with a token in a field its message does not format is
        still redacted (the JSON format writes every field); events
        without one pass unchanged.
        """
        for fmt in ("json", "text"):
            out = io.StringIO()
            obs = logs.make_observer(fmt, "debug", out)
            emit(obs, LogLevel.debug, fmt="request {path}", path="/ws",
                 headers={"authorization": f"Bearer {self.JWT}"})
            emit(obs, who="plain")
            self.assertNotIn(self.JWT, out.getvalue())
            self.assertIn("request /ws", out.getvalue())
            self.assertIn("plain", out.getvalue())
            if fmt == "json":
                self.assertIn(logs.REDACTED, out.getvalue())    # the headers field
        seen = []
        event = {"log_format": "hello {who}", "who": "x", "log_level": LogLevel.info}
        logs.Redactor(seen.append)(event)
        self.assertIs(seen[0], event)
