"""
Tests for placement in balance (issue 16), L{odin_ws.parent.readiness}
through the node's door at the dispatcher: the startup gate (no client is
taken until every shard registered or C{listen.startup_grace} passed) and
the restart hold (while a restarting shard is due back, an alive shard takes
no more than a fair share). Driven by a MemoryReactorClock and fake shard
handles whose C{alive} the test flips as the supervisor would.
"""

from __future__ import annotations

import json

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from odin_ws import tap
from odin_ws.common import config as configmod
from odin_ws.common.commands import Handoff, Register, Stats
from odin_ws.common.settings import Settings
from odin_ws.parent.admission import Admission
from tests.helpers import (
    UPGRADE,
    DispatcherTestCase,
    FakeOptions,
    FakeReactor,
    FakeShard,
    FdTransport,
    Response,
    connect_shard,
    get,
    make_settings,
    sample,
)


class BalanceTestCase(DispatcherTestCase):
    """A node of shards whose handoffs are answered at once, with the real door."""

    def setUp(self):
        super().setUp()
        self.config = self.config.replace(limits__connection_burst_per_ip=100000,
                                          limits__connection_rate_per_ip=1000.0)
        self.ports = iter(range(10000, 60000))

    def node(self, *shards: FakeShard) -> None:
        self.shards = list(shards)
        for shard in self.shards:
            shard.answer = lambda command, kw: {"connections": 1}
        self.admission = Admission(self.reactor.seconds, None, make_settings(self.config),
                                   lambda: self.shards)
        self.door = self.make(admission=self.admission)

    def upgrade(self):
        """One client's upgrade: the response (503, ...) or None when it was handed over."""
        proto, transport = self.connect(self.door,
                                        IPv4Address("TCP", "10.0.0.1", next(self.ports)))
        proto.dataReceived(UPGRADE)
        handed = transport in self.released
        response = None if handed else self.response(transport)
        proto.connectionLost(Failure(ConnectionDone()))
        return response

    def upgrades(self, n: int) -> list:
        return [self.upgrade() for _ in range(n)]

    def placed(self) -> list[int]:
        return [sum(1 for c in s.calls if c[0] is Handoff) for s in self.shards]


class StartupTests(BalanceTestCase):
    def test_not_accepting_until_every_shard_registered(self):
        """
        With one shard of three registered, upgrades get 503 "starting" with
        Retry-After the grace left (listen.startup_grace); once all three
        registered, 30 clients spread 10/10/10. (Before, the first shard took
        all 30 and kept them: [30, 0, 0].)
        """
        self.node(FakeShard(0), FakeShard(1, alive=False), FakeShard(2, alive=False))
        before = sample("odinws_rejected_connections_total", status="503", reason="starting")
        r = self.upgrade()
        self.assertEqual((r.status, r.headers["retry-after"]),
                         (503, str(int(self.config["listen.startup_grace"]))))
        self.assertEqual(sample("odinws_rejected_connections_total", status="503",
                                reason="starting"), before + 1)
        self.assertTrue(self.admission.starting)
        self.reactor.advance(1)
        self.shards[1].alive = self.shards[2].alive = True
        self.assertEqual(self.upgrades(30), [None] * 30)
        self.assertEqual(self.placed(), [10, 10, 10])
        self.assertFalse(self.admission.starting)

    def test_grace_then_accepts_with_those_registered(self):
        """
        A shard that has not registered by the end of listen.startup_grace
        does not keep the node closed: after it, the others take clients.
        """
        self.node(FakeShard(0), FakeShard(1), FakeShard(2, alive=False))
        self.assertEqual(self.upgrade().status, 503)
        self.reactor.advance(self.config["listen.startup_grace"])
        self.shards[2].crash_looping = True
        self.assertEqual(self.upgrades(4), [None] * 4)
        self.assertEqual(self.placed(), [2, 2, 0])

    def test_each_shard_registered_once_is_enough(self):
        """A shard that registered and crashed before the last one registered still counts."""
        self.node(FakeShard(0), FakeShard(1, alive=False))
        self.assertTrue(self.admission.starting)
        self.shards[0].alive, self.shards[1].alive = False, True
        self.assertFalse(self.admission.starting)

    def test_started_once_for_good(self):
        """Once every shard registered, a later crash does not bring "starting" back."""
        self.node(FakeShard(0), FakeShard(1))
        self.assertFalse(self.admission.starting)
        self.shards[1].alive = False
        self.assertFalse(self.admission.starting)

    def test_node_started_restarts_the_grace(self):
        """The grace counts from node_started (the Node's startService), not from construction."""
        self.node(FakeShard(0), FakeShard(1, alive=False))
        self.reactor.advance(self.config["listen.startup_grace"] - 1)
        self.admission.node_started()
        self.reactor.advance(2)
        self.assertTrue(self.admission.starting)
        self.assertEqual(self.upgrade().headers["retry-after"],
                         str(int(self.config["listen.startup_grace"]) - 2))


class RestartHoldTests(BalanceTestCase):
    def crash(self, shard: FakeShard) -> None:
        """The shard's process died: its clients are gone, it is restarting."""
        self.assertFalse(self.admission.starting, "the node had started")
        shard.alive = False
        shard.connections = 0

    def test_clients_of_a_crashed_shard_wait_for_it(self):
        """
        Two shards with 100 clients each; shard 0 crashes and its 100 clients
        reconnect before it is back: each gets 503 "rebalancing" with
        Retry-After: 1 and shard 1 takes none of them (it holds its fair
        share already); once shard 0 registered again, they all land on it:
        100/100. (Before: 0/200, and shard 0 stayed empty.)
        """
        self.node(FakeShard(0, 100, capacity=1000), FakeShard(1, 100, capacity=1000))
        self.crash(self.shards[0])
        before = sample("odinws_rejected_connections_total", status="503", reason="rebalancing")
        refused = self.upgrades(100)
        self.assertEqual({(r.status, r.headers["retry-after"]) for r in refused},
                         {(503, "1")})
        self.assertEqual(sample("odinws_rejected_connections_total", status="503",
                                reason="rebalancing"), before + 100)
        self.assertEqual(self.placed(), [0, 0])
        self.reactor.advance(1.3)
        self.shards[0].alive = True
        self.assertEqual(self.upgrades(100), [None] * 100)
        self.assertEqual([s.connections for s in self.shards], [100, 100])

    def test_survivors_below_fair_share_still_take_clients(self):
        """
        While shard 2 is due back, shard 0 (40 clients) takes clients until
        it holds a fair share of the three, ceil((141 + placed) / 3) = 51,
        and the next one is refused; shard 1 (100) takes none.
        """
        self.node(FakeShard(0, 40, capacity=1000), FakeShard(1, 100, capacity=1000),
                  FakeShard(2, capacity=1000))
        self.crash(self.shards[2])
        results = self.upgrades(12)
        self.assertEqual(results[:11], [None] * 11)
        self.assertEqual(results[11].status, 503)
        self.assertEqual([s.connections for s in self.shards], [51, 100, 0])

    def test_hold_is_bounded(self):
        """
        The hold lasts listen.restart_hold seconds from when the shard was
        first seen down: a shard that is not back by then no longer keeps
        clients out.
        """
        self.node(FakeShard(0, 10), FakeShard(1, 10))
        self.crash(self.shards[0])
        self.assertEqual(self.upgrade().status, 503)
        self.reactor.advance(self.config["listen.restart_hold"])
        self.assertEqual(self.upgrades(3), [None] * 3)
        self.assertEqual(self.placed(), [0, 3])

    def test_no_hold_for_a_crash_looping_shard(self):
        """A crash-looping shard is not due back: the survivors take its clients at once."""
        self.node(FakeShard(0, 10), FakeShard(1, 10))
        self.crash(self.shards[0])
        self.shards[0].crash_looping = True
        self.assertEqual(self.upgrades(3), [None] * 3)

    def test_hold_off(self):
        """listen.restart_hold 0 turns the hold off (placement as before)."""
        self.config = self.config.replace(listen__restart_hold=0)
        self.node(FakeShard(0, 10), FakeShard(1, 10))
        self.crash(self.shards[0])
        self.assertEqual(self.upgrades(3), [None] * 3)

    def test_hold_does_not_touch_other_answers(self):
        """During the hold /health and other answers are served as usual."""
        self.node(FakeShard(0, 10), FakeShard(1, 10))
        self.crash(self.shards[0])
        proto, transport = self.connect(self.door)
        proto.dataReceived(b"GET /health HTTP/1.1\r\nHost: n\r\n\r\n")
        self.assertEqual(self.response(transport).status, 200)


class NodeStartupTests(SynchronousTestCase):
    """
    The startup gate as C{makeService} wires it (supervisor, admission,
    /health and the public listener), two shard processes that are never
    real, AMP over L{iosim}.
    """

    def setUp(self):
        self.reactor = FakeReactor()
        self.addCleanup(self.reactor.close_fds)
        config = configmod.load(None, environ={}).replace(
            shards=2, cpu_affinity="off", listen__port="tcp:0")
        self.config = config
        self.node = tap.makeService(FakeOptions(Settings.from_config(config)), reactor=self.reactor)
        self.node.admission.node_started()
        self.node.supervisor.startService()
        self.addCleanup(self.stop)
        self.pumps = []
        self.links = []

    def register(self, index: int) -> None:
        shard, pump = connect_shard(self.reactor, index)
        shard.callRemote(Register, index=index, pid=self.reactor.processes[index].pid,
                         capacity=10000)
        self.pumps.append(pump)
        self.links.append(shard)
        self.report()

    def report(self) -> None:
        """Every registered shard sends its stats (fresh ones: stale stats mean not accepting)."""
        for shard, pump in zip(self.links, self.pumps):
            shard.callRemote(Stats, connections=0, capacity=10000,
                             status=b'{"accepting": true}')
            pump.flush()

    def stop(self) -> None:
        d = self.node.supervisor.stopService()
        for pump in self.pumps:
            pump.flush()
        for process in self.reactor.processes:
            if not process.ended:
                process.end(signal=15)
        for pump in self.pumps:
            pump.flush()
        self.successResultOf(d)

    def get(self, data: bytes) -> Response:
        proto = self.node.dispatchers[0].buildProtocol(None)
        transport = FdTransport(self)
        proto.makeConnection(transport)
        proto.dataReceived(data)
        return Response(transport.value())

    def test_health_starting_until_every_shard_registered(self):
        """
        With one of two shards registered, /health is 503 "starting" (it was
        200 "ok") and odinws_ready 0, and an upgrade gets 503 with
        Retry-After; once the second registered, /health is 200 "ok".
        """
        self.register(0)
        r = self.get(get("/health"))
        self.assertEqual((r.status, json.loads(r.body)["status"]), (503, "starting"))
        self.assertEqual(sample("odinws_ready"), 0)
        r = self.get(UPGRADE)
        self.assertEqual((r.status, r.headers["retry-after"]),
                         (503, str(int(self.config["listen.startup_grace"]))))
        self.register(1)
        r = self.get(get("/health"))
        self.assertEqual((r.status, json.loads(r.body)["status"]), (200, "ok"))

    def test_health_ok_after_grace(self):
        """A shard still unregistered after listen.startup_grace no longer keeps /health at "starting"."""
        self.register(0)
        self.reactor.advance(self.config["listen.startup_grace"])
        self.report()
        r = self.get(get("/health"))
        self.assertEqual((r.status, json.loads(r.body)["status"]), (200, "ok"))
