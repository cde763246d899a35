"""
Tests for the limits at the parent's door: the dispatcher's real gate
(L{odin_ws.parent.admission.Admission}: the resource guard, then the per-IP
connection rate)
and the counting of head refusals, on top of the fakes of
tests/test_dispatcher.py (which covers the 408/431 statuses themselves).
"""

from __future__ import annotations

import os

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from odin_ws.parent import guard
from odin_ws.parent.admission import Admission
from tests.helpers import (
    UPGRADE,
    DispatcherTestCase,
    FakeRoot,
    RefusingAdmission,
    make_dispatcher,
    make_settings,
    sample,
)

PAGE = os.sysconf("SC_PAGE_SIZE")


class GateTests(DispatcherTestCase):
    def setUp(self):
        super().setUp()
        self.root = FakeRoot(self.mktemp())
        self.use_pages(100)
        # One process (pid 42) with a 1000-page memory budget.
        settings = make_settings(self.config)
        self.guard = guard.Guard(self.reactor, lambda: [42], guard.Budget(1.0, 1000 * PAGE, "host"),
                                 settings, root=self.root.path)
        self.guard.sample()
        self.gated = self.make(admission=Admission(self.reactor.seconds, self.guard, settings))
        for shard in self.shards:
            shard.answer = lambda command, kw: {"connections": 1}

    def use_pages(self, pages: int) -> None:
        stat = ["S"] + ["0"] * 42
        self.root.write("proc/42/stat", "42 (python) " + " ".join(stat) + "\n")
        self.root.write("proc/42/statm", f"999 {pages} 0 0 0 0 0\n")

    def upgrade(self, ip: str = "10.0.0.1"):
        proto, transport = self.connect(self.gated, IPv4Address("TCP", ip, 5555))
        proto.dataReceived(UPGRADE)
        if transport in self.released:
            # The real release aborts the parent's copy: the connection is lost.
            proto.connectionLost(Failure(ConnectionDone()))
        return transport

    def handed(self) -> int:
        return sum(len(s.calls) for s in self.shards)

    def test_resource_guard_503(self):
        """
        While the node's memory is over guard.memory_threshold, upgrades get
        503 with Retry-After (listen.retry_after), counted as
        overloaded_memory, and reach no shard; once usage falls back, they do.
        """
        before = sample("odinws_rejected_connections_total", status="503",
                        reason="overloaded_memory")
        self.use_pages(int(1000 * self.config["guard.memory_threshold"]) + 50)
        self.guard.sample()
        r = self.response(self.upgrade())
        self.assertEqual((r.status, r.headers["retry-after"]),
                         (503, str(self.config["listen.retry_after"])))
        self.assertEqual(sample("odinws_rejected_connections_total", status="503",
                                reason="overloaded_memory"), before + 1)
        self.assertEqual(self.handed(), 0)
        self.use_pages(100)
        self.guard.sample()
        self.upgrade()
        self.assertEqual(self.handed(), 1)

    def test_connection_rate_per_ip_429(self):
        """
        Past limits.connection_burst_per_ip new connections from one IP get
        429 with Retry-After, counted as ip_rate; another IP is unaffected,
        and the IP gets in again once its bucket refilled.
        """
        burst = self.config["limits.connection_burst_per_ip"]
        rate = self.config["limits.connection_rate_per_ip"]
        before = sample("odinws_rejected_connections_total", status="429", reason="ip_rate")
        for _ in range(burst):
            self.upgrade()
        self.assertEqual(self.handed(), burst)
        r = self.response(self.upgrade())
        self.assertEqual((r.status, r.headers["retry-after"]),
                         (429, str(self.config["listen.retry_after"])))
        self.assertEqual(sample("odinws_rejected_connections_total", status="429",
                                reason="ip_rate"), before + 1)
        self.upgrade("10.0.0.2")
        self.assertEqual(self.handed(), burst + 1)
        self.reactor.advance(1.0 / rate)
        self.upgrade()
        self.assertEqual(self.handed(), burst + 2)


class HeadLimitCountTests(DispatcherTestCase):
    def test_head_refusals_counted(self):
        """A 408 (listen.head_timeout) and a 431 (listen.max_head_bytes) are counted by status and reason."""
        timeouts = sample("odinws_rejected_connections_total", status="408", reason="head_timeout")
        large = sample("odinws_rejected_connections_total", status="431", reason="head_too_large")
        self.connect()
        self.reactor.advance(self.config["listen.head_timeout"])
        proto, _ = self.connect()
        proto.dataReceived(b"GET /ws HTTP/1.1\r\nX-Pad: "
                           + b"a" * self.config["listen.max_head_bytes"])
        self.assertEqual(sample("odinws_rejected_connections_total", status="408",
                                reason="head_timeout"), timeouts + 1)
        self.assertEqual(sample("odinws_rejected_connections_total", status="431",
                                reason="head_too_large"), large + 1)


class ForwardedForGateTests(SynchronousTestCase):
    """The door's per-IP check sees the client behind a trusted proxy."""

    def test_gate_sees_forwarded_ip_only_from_trusted_proxy(self):
        """X-Forwarded-For names the gate's IP only when the peer is in limits.trusted_proxies."""
        from twisted.internet.testing import MemoryReactorClock, StringTransport

        seen = []
        settings = make_settings(limits__trusted_proxies=["10.0.0.5"])

        d = make_dispatcher(MemoryReactorClock(), settings, lambda: [],
                            admission=RefusingAdmission(seen, (429, "ip_rate")))
        for peer in ("10.0.0.5", "10.0.0.6"):
            proto = d.buildProtocol(IPv4Address("TCP", peer, 4000))
            proto.makeConnection(StringTransport(peerAddress=IPv4Address("TCP", peer, 4000)))
            proto.dataReceived(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                               b"Connection: Upgrade\r\nX-Forwarded-For: 1.2.3.4, 7.7.7.7\r\n\r\n")
        self.assertEqual(seen, ["7.7.7.7", "10.0.0.6"])
