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
