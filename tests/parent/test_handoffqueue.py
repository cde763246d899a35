"""
Tests for upgrades that wait for a handoff slot (L{odin_ws.parent.handoffqueue}
and the dispatcher's waiting state): real shard handles on a
MemoryReactorClock behind the dispatcher, a fake control channel whose calls
the tests answer by hand.
"""

from __future__ import annotations

from twisted.internet import error
from twisted.internet.address import IPv4Address
from twisted.python.failure import Failure

from odin_ws.common.commands import HandoffRefused
from odin_ws.parent.admission import Admission
from odin_ws.parent.handoffqueue import RECHECK_INTERVAL
from tests.helpers import UPGRADE, make_dispatcher, make_settings, sample
from tests.parent.test_handoff_liveness import LivenessTestCase


class WaitTestCase(LivenessTestCase):
    """Two shards of capacity 100, two handoff slots each: four upgrades fill every slot."""

    supervisor = dict(LivenessTestCase.supervisor, max_handoffs_in_flight=2)

    def setUp(self):
        super().setUp()
        self.order: list[dict] = []
        for link in self.links:
            link.callRemote = self.recorded(link.callRemote)

    def recorded(self, call_remote):
        """C{call_remote}, noting each call's arguments in L{order}, across both shards."""
        def call(command, **kw):
            self.order.append(kw)
            return call_remote(command, **kw)
        return call

    def sent(self) -> list[int]:
        """The client (its peer port) of every handoff call sent, to either shard, in order."""
        return [int(kw["peer"].rsplit(":", 1)[1]) for kw in self.order]

    def answer_one(self) -> bool:
        """A shard answers its oldest unanswered handoff (adopted): False when none is left."""
        for link in self.links:
            for _, _, d in link.calls:
                if not d.called:
                    d.callback({"connections": 1})
                    return True
        return False

    def client(self, port: int):
        """One upgrade from 10.0.0.1:C{port}: its protocol and transport."""
        proto, transport = self.connect(peer=IPv4Address("TCP", "10.0.0.1", port))
        proto.dataReceived(UPGRADE)
        return proto, transport

    def storm(self, count: int) -> list:
        """C{count} upgrades at once, from ports 1..count; their transports."""
        return [self.client(port)[1] for port in range(1, count + 1)]


class StormTests(WaitTestCase):
    def test_more_upgrades_than_slots_none_refused(self):
        """
        Twenty upgrades at once with four handoff slots on the node: four are
        sent, sixteen wait (odinws_handoff_waiting), none is answered; as
        the shards answer, the waiting ones are handed over, until all
        twenty are, none refused, each wait observed.
        """
        waiting = sample("odinws_handoff_waiting")
        waited = sample("odinws_handoff_wait_seconds_count")
        transports = self.storm(20)
        self.assertEqual(len(self.sent()), 4)
        self.assertEqual(sample("odinws_handoff_waiting"), waiting + 16)
        self.assertFalse(any(t.disconnecting or t.value() for t in transports))
        while self.answer_one():
            pass
        self.assertEqual(sorted(self.sent()), list(range(1, 21)))
        self.assertEqual(sorted(map(id, self.released)), sorted(map(id, transports)))
        self.assertFalse(any(t.value() for t in transports), "no status written")
        self.assertEqual(sample("odinws_handoff_waiting"), waiting)
        self.assertEqual(sample("odinws_handoff_wait_seconds_count"), waited + 16)

    def test_first_come_first_served(self):
        """
        Waiting upgrades are handed over in arrival order, and one arriving
        while others wait goes behind them even if a slot is free when it
        arrives.
        """
        self.storm(6)
        self.answer_one()
        self.client(7)
        while self.answer_one():
            pass
        self.assertEqual(self.sent(), [1, 2, 3, 4, 5, 6, 7])

    def test_failed_handoff_frees_a_slot(self):
        """A handoff that fails (the shard refused) frees its slot for the next waiter."""
        transports = self.storm(5)
        self.links[0].calls[0][2].errback(Failure(HandoffRefused("full")))
        self.assertEqual(self.sent()[-1], 5)
        self.assertFalse(transports[4].disconnecting)

    def test_client_leaving_while_waiting(self):
        """
        A waiting client that closes its connection leaves the queue: it is
        never handed over, and the one behind it takes the slot.
        """
        waiting = sample("odinws_handoff_waiting")
        protos = [self.client(port)[0] for port in range(1, 7)]
        protos[4].connectionLost(Failure(error.ConnectionDone()))
        self.assertEqual(sample("odinws_handoff_waiting"), waiting + 1)
        self.answer_one()
        self.assertEqual(self.sent()[-1], 6)
        self.assertNotIn(5, self.sent())
        self.assertEqual(sample("odinws_handoff_waiting"), waiting)


class BoundTests(WaitTestCase):
    def test_wait_bounded_by_head_timeout(self):
        """
        A client that finds no slot before its head timeout (counted from its
        accept) is answered 503 wait_timeout with Retry-After, counted in
        odinws_handoff_wait_timeouts_total, and leaves the queue.
        """
        timeouts = sample("odinws_handoff_wait_timeouts_total")
        rejected = sample("odinws_rejected_connections_total", status="503",
                          reason="wait_timeout")
        waiting = sample("odinws_handoff_waiting")
        head_timeout = make_settings(self.config).listen.head_timeout
        transports = self.storm(5)
        self.wait(head_timeout - 1, loads=(2, 2))
        self.assertFalse(transports[4].disconnecting)
        self.wait(1, loads=(2, 2))
        r = self.response(transports[4])
        self.assertEqual((r.status, r.headers["retry-after"]), (503, "5"))
        self.assertEqual(sample("odinws_handoff_wait_timeouts_total"), timeouts + 1)
        self.assertEqual(sample("odinws_rejected_connections_total", status="503",
                                reason="wait_timeout"), rejected + 1)
        self.assertEqual(sample("odinws_handoff_waiting"), waiting)
        self.answer_one()
        self.assertNotIn(5, self.sent(), "the timed-out client is not handed over")

    def test_waiting_counts_against_max_heads(self):
        """
        A waiting connection is still held before its upgrade: with
        listen.max_heads 6, four handoffs sent and two waiting, a seventh
        connection gets 503 node_heads.
        """
        settings = make_settings(self.config, listen__max_heads=6, listen__max_heads_per_ip=100,
                                 supervisor__max_handoffs_in_flight=2)
        admission = Admission(self.reactor.seconds, settings=settings)
        self.dispatcher = make_dispatcher(self.reactor, settings, lambda: self.shards,
                                          admission=admission)
        self.storm(6)
        before = sample("odinws_rejected_connections_total", status="503", reason="node_heads")
        self.assertEqual(self.response(self.client(7)[1]).status, 503)
        self.assertEqual(sample("odinws_rejected_connections_total", status="503",
                                reason="node_heads"), before + 1)


class StillRefusedTests(WaitTestCase):
    def test_stalled_shards_refuse_waiters(self):
        """
        Clients waiting for shards that then stop reporting (stale stats:
        stalled) are answered 503 no_shard on the queue's next re-check,
        long before their head timeout, and a new upgrade is refused at once.
        """
        transports = self.storm(6)
        stale = make_settings(self.config, **{
            f"supervisor__{k}": v for k, v in self.supervisor.items()}).supervisor
        self.reactor.advance(stale.stats_stale_after + RECHECK_INTERVAL)
        for t in transports[4:]:
            self.assertEqual(self.response(t).status, 503)
        self.assertEqual(self.response(self.request(UPGRADE)[1]).status, 503)
        self.assertEqual(self.sent(), [1, 2, 3, 4])

    def test_answering_shard_is_not_stalled(self):
        """
        A shard deep in a storm whose Stats come late but which keeps
        answering handoffs is serving, not stalled: its waiters are handed
        over, none refused, though no Stats arrived for longer than
        stats_stale_after.
        """
        transports = self.storm(12)
        stale = make_settings(self.config, **{
            f"supervisor__{k}": v for k, v in self.supervisor.items()}).supervisor
        step = stale.stats_stale_after / 2
        for _ in range(4):
            self.reactor.advance(step)
            self.answer_one()
            self.answer_one()
            self.answer_one()
        while self.answer_one():
            pass
        self.assertEqual(sorted(self.sent()), list(range(1, 13)))
        self.assertFalse(any(t.value() for t in transports), "nobody refused")

    def test_full_shards_refuse_at_once(self):
        """Shards at their capacity (not only out of slots) refuse at once: nobody waits."""
        waiting = sample("odinws_handoff_waiting")
        for h in self.shards:
            h.reported(100, 100, {"accepting": True})
        r = self.response(self.request(UPGRADE)[1])
        self.assertEqual(r.status, 503)
        self.assertEqual(sample("odinws_handoff_waiting"), waiting)

    def test_dead_shard_while_waiting(self):
        """
        When the only shard with room dies while clients wait for it, its
        handoff calls fail, and the waiters are refused (no shard is left),
        not held until their timeout.
        """
        self.shards[1].reported(100, 100, {"accepting": True})
        transports = self.storm(3)
        self.assertEqual(self.sent(), [1, 2])
        self.shards[0].channel_closed(self.shards[0].link)
        for _, _, d in self.links[0].calls:
            d.errback(Failure(error.ConnectionLost()))
        self.assertEqual(self.response(transports[2]).status, 503)

    def test_draining_refuses_waiters(self):
        """A node that starts draining answers its waiting clients 503 draining when it closes."""
        transports = self.storm(5)
        self.dispatcher.admission.stop_accepting()
        self.dispatcher.close()
        r = self.response(transports[4])
        self.assertEqual(r.status, 503)
        self.assertIn(b"shutting down", r.body)
