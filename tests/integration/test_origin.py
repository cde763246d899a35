"""
The Origin rule of a real node, the same on both transports (WebSocket on
/ws with the C{websockets} library, Server-Sent Events with a raw socket):
C{Origin: null} (a page opened from a file) as limits.allowed_origins
documents it, and every refusal answered and counted alike.
"""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect
from websockets.typing import Origin

from tests.helpers import SseSocket
from tests.helpers.node import http_get, wait_for
from tests.helpers.topics import TopicNodeCase

QUERY = {"channels": "odin.token.*.*"}


class OriginCase(TopicNodeCase):
    shards = 1
    partitions = 1
    prefix = "origin"
    allowed: list[str] = []

    def setUp(self):
        super().setUp()
        self.n = self.node(**{"limits.allowed_origins": self.allowed,
                              "limits.connection_rate_per_ip": 1000.0,
                              "limits.connection_burst_per_ip": 1000})

    def websocket(self, origin: str) -> int:
        """The status of an upgrade with this Origin (101 when it opened)."""
        try:
            with connect(self.n.url(), origin=Origin(origin), open_timeout=10):
                return 101
        except InvalidStatus as e:
            return e.response.status_code

    def stream(self, origin: str) -> SseSocket:
        s = SseSocket(self.n.port, QUERY, (f"Origin: {origin}",))
        self.addCleanup(s.close)
        return s

    def refused(self, status: int, reason: str) -> float:
        """odinws_rejected_connections_total of the shard for this status and reason."""
        text = http_get(self.n.port, "/metrics")[2].decode()
        return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
                   if s.name == "odinws_rejected_connections_total" and "shard" in s.labels
                   and s.labels["status"] == str(status) and s.labels["reason"] == reason)

    def counted(self, status: int, reason: str, expected: float) -> None:
        """Wait for the count to reach C{expected} (/metrics is gathered once a second)."""
        wait_for(lambda: self.refused(status, reason) == expected, 10, 0.2,
                 f"{expected:g} refusals {status} {reason}")


class OpenOriginTests(OriginCase):
    """limits.allowed_origins empty: "empty allows all"."""

    def test_null_origin_allowed_on_both(self):
        """
        With no list, a page opened from a file (Origin: null) connects on
        both transports (Autobahn refused it on /ws with an uncounted 400,
        while the stream took it).
        """
        self.assertEqual(self.websocket("null"), 101)
        s = self.stream("null")
        self.assertEqual(s.status, 200)
        self.assertEqual(s.headers["access-control-allow-origin"], "*")

    def test_malformed_origin_refused_alike(self):
        """
        An Origin that is no origin (neither null nor scheme://host) is a
        400 on both transports, each counted under bad_origin.
        """
        before = self.refused(400, "bad_origin")
        self.assertEqual(self.websocket("nonsense"), 400)
        s = self.stream("nonsense")
        self.assertEqual(s.status, 400)
        self.assertEqual(s.error()["code"], "invalid_origin")
        self.counted(400, "bad_origin", before + 2)


class ListedOriginTests(OriginCase):
    """A list set: only exact matches; null only when listed."""

    allowed = ["https://app.example.com", "null"]

    def test_listed_null_and_origin_allowed(self):
        """null listed: a file page connects on both; so does a listed site."""
        self.assertEqual(self.websocket("null"), 101)
        self.assertEqual(self.stream("null").status, 200)
        self.assertEqual(self.websocket("https://app.example.com"), 101)
        s = self.stream("https://app.example.com")
        self.assertEqual(s.headers["access-control-allow-origin"], "https://app.example.com")

    def test_other_origin_refused_alike(self):
        """An unlisted origin gets 403 on both transports, each counted under origin."""
        before = self.refused(403, "origin")
        self.assertEqual(self.websocket("https://evil.example.com"), 403)
        s = self.stream("https://evil.example.com")
        self.assertEqual((s.status, s.error()["code"]), (403, "origin_not_allowed"))
        self.counted(403, "origin", before + 2)


class UnlistedNullTests(OriginCase):
    """A list without null: a file page is refused, 403, on both transports."""

    allowed = ["https://app.example.com"]

    def test_null_refused_alike(self):
        """Origin: null not listed: 403 origin_not_allowed on both, counted twice."""
        before = self.refused(403, "origin")
        self.assertEqual(self.websocket("null"), 403)
        s = self.stream("null")
        self.assertEqual((s.status, s.error()["code"]), (403, "origin_not_allowed"))
        self.counted(403, "origin", before + 2)
