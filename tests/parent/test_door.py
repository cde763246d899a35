"""
Tests for the limits on every connection before its upgrade (issue 16,
"nothing unbounded before the upgrade"): the per-IP connection rate applies
to C{/health}, 404s and connections still sending their head too, and the
connections the parent holds are capped per client IP
(C{listen.max_heads_per_ip}, 429) and per node (C{listen.max_heads}, 503),
through L{odin_ws.parent.admission.Admission} at the dispatcher.
"""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure

from odin_ws.parent.admission import Admission
from tests.helpers import UPGRADE, DispatcherTestCase, get, make_settings, sample


def rejected(status: int, reason: str) -> float:
    return sample("odinws_rejected_connections_total", status=str(status), reason=reason)


class DoorTests(DispatcherTestCase):
    """A node whose door allows a burst of 3 per IP, 2 held per IP, 4 held in all."""

    def setUp(self):
        super().setUp()
        self.config = self.config.replace(limits__connection_burst_per_ip=3,
                                          listen__max_heads_per_ip=2, listen__max_heads=4)
        self.admission = Admission(self.reactor.seconds, None, make_settings(self.config))
        self.door = self.make(admission=self.admission)

    def open(self, ip: str = "10.0.0.1", dispatcher=None):
        return self.connect(dispatcher or self.door, IPv4Address("TCP", ip, 5555))

    def close(self, proto) -> None:
        proto.connectionLost(Failure(ConnectionDone()))

    def fetch(self, path: str, ip: str = "10.0.0.1"):
        proto, transport = self.open(ip)
        proto.dataReceived(get(path))
        r = self.response(transport)
        self.close(proto)
        return r

    def assertRefusedUnread(self, transport, status: int):
        """Answered C{status} with Retry-After and closed, with nothing read first."""
        self.assertEqual(transport.producerState, "paused")
        r = self.response(transport)
        self.assertEqual(r.status, status)
        self.assertEqual(r.headers["retry-after"], str(self.config["listen.retry_after"]))

    def test_rate_applies_to_every_request(self):
        """
        /health, a 404 and a 426 spend the client IP's connection rate like
        upgrades do: past limits.connection_burst_per_ip the next connection
        of that IP is refused 429 (ip_rate) before its head is read, and
        another IP is not. (Before, only upgrades were rate-limited.)
        """
        before = rejected(429, "ip_rate")
        self.assertEqual(self.fetch("/health").status, 200)
        self.assertEqual(self.fetch("/nope").status, 404)
        self.assertEqual(self.fetch("/ws").status, 426)
        _, transport = self.open()
        self.assertRefusedUnread(transport, 429)
        self.assertEqual(rejected(429, "ip_rate"), before + 1)
        self.assertEqual(self.fetch("/health", "10.0.0.2").status, 200)
        self.reactor.advance(1.0 / self.config["limits.connection_rate_per_ip"])
        self.assertEqual(self.fetch("/health").status, 200)

    def test_heads_per_ip(self):
        """
        A client IP may hold listen.max_heads_per_ip connections still
        sending their head; the next is refused 429 (ip_heads), counted,
        while another IP gets in; once one of them is answered and gone
        (408 at listen.head_timeout), the IP may open another.
        """
        before = rejected(429, "ip_heads")
        first, _ = self.open()
        self.open()
        _, transport = self.open()
        self.assertRefusedUnread(transport, 429)
        self.assertEqual(rejected(429, "ip_heads"), before + 1)
        self.assertEqual(self.admission.held_by("10.0.0.1"), 2)
        _, transport = self.open("10.0.0.2")
        self.assertFalse(transport.disconnecting)
        self.reactor.advance(self.config["listen.head_timeout"])
        self.close(first)
        self.assertEqual(self.admission.held_by("10.0.0.1"), 1)
        _, transport = self.open()
        self.assertFalse(transport.disconnecting)

    def test_heads_per_node(self):
        """
        The node holds at most listen.max_heads connections before their
        upgrade, whatever their IPs: the next is refused 503 (node_heads)
        with Retry-After, counted.
        """
        before = rejected(503, "node_heads")
        for i in range(4):
            _, transport = self.open(f"10.0.1.{i}")
            self.assertFalse(transport.disconnecting)
        _, transport = self.open("10.0.1.9")
        self.assertRefusedUnread(transport, 503)
        self.assertEqual(rejected(503, "node_heads"), before + 1)
        self.assertEqual(self.admission.held, 4)

    def test_every_path_releases(self):
        """
        Answered, timed-out, refused and handed-over connections all give
        their place back once gone: nothing stays counted.
        """
        self.fetch("/health")
        proto, _ = self.open("10.0.0.2")
        self.reactor.advance(self.config["listen.head_timeout"])
        self.close(proto)
        proto, transport = self.open("10.0.0.3")
        proto.dataReceived(UPGRADE)
        self.shards[0].calls[0][2].callback({"connections": 1})
        self.assertEqual(self.released, [transport])
        self.close(proto)
        proto, _ = self.open("10.0.0.4")
        proto.dataReceived(b"GET / HTTP/1.1\r\nX: \x85\r\n\r\n")
        self.close(proto)
        self.assertEqual(self.admission.held, 0)

    def test_admin_listener_limited_too(self):
        """The admin listener's connections go through the same door (one node-wide count)."""
        admin = self.make(admission=self.admission, admin=True)
        self.open("10.0.0.1", admin)
        self.open("10.0.0.1", admin)
        _, transport = self.open("10.0.0.1", self.door)
        self.assertRefusedUnread(transport, 429)

    def test_tls_refused_silently(self):
        """
        With TLS (handed over unread), a connection over the IP's rate is
        closed without a plaintext answer and reaches no shard.
        """
        tls = self.make(admission=self.admission, tls=True)
        for _ in range(3):
            proto, _ = self.open(dispatcher=tls)
            self.close(proto)
        _, transport = self.open(dispatcher=tls)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(transport.value(), b"")
        self.assertEqual(sum(len(s.calls) for s in self.shards), 3)


class TrustedProxyTests(DispatcherTestCase):
    """Behind a trusted proxy the rate is the forwarded client's, charged per request."""

    def setUp(self):
        super().setUp()
        self.config = self.config.replace(limits__connection_burst_per_ip=3,
                                          listen__max_heads_per_ip=2,
                                          limits__trusted_proxies=["10.0.0.5"])
        self.admission = Admission(self.reactor.seconds, None, make_settings(self.config))
        self.door = self.make(admission=self.admission)

    def forwarded(self, client: str):
        proto, transport = self.connect(self.door, IPv4Address("TCP", "10.0.0.5", 5555))
        proto.dataReceived(get("/health", extra=f"X-Forwarded-For: {client}\r\n"))
        r = self.response(transport)
        proto.connectionLost(Failure(ConnectionDone()))
        return r

    def test_proxy_not_limited_as_one_client(self):
        """
        The proxy's own address is held to neither the per-IP rate nor the
        per-IP cap (it carries many clients), but each forwarded client's
        requests spend that client's rate: its 4th /health is 429.
        """
        for i in range(3):
            self.connect(self.door, IPv4Address("TCP", "10.0.0.5", 5555 + i))
        self.assertEqual(self.admission.held, 3)
        for client in ("1.2.3.4", "1.2.3.5", "1.2.3.6"):
            self.assertEqual(self.forwarded(client).status, 200)
        for _ in range(2):
            self.assertEqual(self.forwarded("1.2.3.4").status, 200)
        self.assertEqual(self.forwarded("1.2.3.4").status, 429)
        self.assertEqual(self.forwarded("1.2.3.7").status, 200)
