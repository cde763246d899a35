"""
Tests for handoffs to shards that answer late, never, or not at all any more
(L{odin_ws.parent.dispatcher} C{place} and the handoff methods, with
L{odin_ws.parent.shardhandle.ShardHandle}'s liveness and in-flight counts):
real shard handles on a MemoryReactorClock, a fake control channel whose
calls the tests complete by hand.
"""

from __future__ import annotations

from twisted.internet import defer, error
from twisted.python.failure import Failure

from odin_ws.common.commands import HandoffRefused
from odin_ws.parent.shardhandle import ShardHandle
from tests.helpers import UPGRADE, DispatcherTestCase, get, make_dispatcher, make_settings, sample


class FakeLink:
    """The parent's end of a shard's control channel: calls wait until the test completes them."""

    def __init__(self):
        self.calls: list[tuple[type, dict, defer.Deferred]] = []

    def callRemote(self, command, **kw):
        d = defer.Deferred()
        self.calls.append((command, kw, d))
        return d


class LivenessTestCase(DispatcherTestCase):
    """Two real ShardHandles, registered at t=0, capacity 100, behind the dispatcher."""

    supervisor = {"stats_interval": 1.0, "stats_stale_after": 3.0,
                  "max_handoffs_in_flight": 64}

    def setUp(self):
        super().setUp()
        settings = make_settings(self.config, **{f"supervisor__{k}": v
                                                 for k, v in self.supervisor.items()})
        self.links = [FakeLink(), FakeLink()]
        self.shards = [ShardHandle(i, None, self.reactor, settings.supervisor) for i in range(2)]
        for h, link in zip(self.shards, self.links):
            h.registered(link, pid=100 + h.index, capacity=100)
        self.dispatcher = make_dispatcher(self.reactor, settings, lambda: self.shards)
        self.timeout = settings.listen.handoff_timeout

    def report(self, index: int, connections: int = 0) -> None:
        """Shard C{index} sends a Stats report."""
        self.shards[index].reported(connections, 100, {"accepting": True})

    def wait(self, seconds: float, loads=(0, 0)) -> None:
        """Let C{seconds} pass, every shard reporting C{loads} each second, as live shards do."""
        for _ in range(int(seconds)):
            self.reactor.advance(1.0)
            for index, connections in enumerate(loads):
                self.report(index, connections)
        self.reactor.advance(seconds - int(seconds))

    def upgrade(self):
        """One client's upgrade; the shard index it was handed to and its transport."""
        sent = [len(link.calls) for link in self.links]
        _, transport = self.request(UPGRADE)
        [index] = [i for i, link in enumerate(self.links) if len(link.calls) > sent[i]]
        return index, transport


class TimeoutTests(LivenessTestCase):
    def test_slot_kept_until_the_call_completes(self):
        """
        A handoff the shard has not answered in time keeps its slot (the
        descriptor and message are still on their way): the shard's count
        and in-flight count drop only when the call really fails, and a late
        success leaves the connection counted as the shard's.
        """
        h = self.shards[0]
        index, _ = self.upgrade()
        self.assertEqual(index, 0)
        self.wait(self.timeout)
        self.assertEqual((h.connections, h.pending), (1, 1))
        self.wait(60)
        self.assertEqual((h.connections, h.pending), (1, 1))
        self.links[0].calls[0][2].errback(Failure(error.ConnectionLost()))
        self.assertEqual((h.connections, h.pending), (0, 0))
        self.upgrade()
        self.wait(self.timeout)
        self.links[0].calls[1][2].callback({"connections": 1})
        self.assertEqual((h.connections, h.pending), (1, 0))

    def test_nothing_written_after_timeout(self):
        """
        At the timeout the parent writes no status (the shard may adopt the
        socket and write its 101 any moment): it drops only its own copy,
        counted in odinws_handoffs_abandoned_total{reason="timeout"}.
        """
        before = sample("odinws_handoffs_abandoned_total", reason="timeout")
        _, transport = self.upgrade()
        self.reactor.advance(self.timeout)
        self.assertEqual(transport.value(), b"")
        self.assertFalse(transport.disconnecting, "no shutdown: the socket is shared")
        self.assertEqual(self.released, [transport])
        self.assertEqual(sample("odinws_handoffs_abandoned_total", reason="timeout"), before + 1)

    def test_late_answer_writes_nothing(self):
        """
        A shard that answers after the timeout (it adopted the socket and
        wrote its 101) gets no 503 written after its 101, and the parent's
        copy is not released twice.
        """
        dispatched = sample("odinws_dispatch_total", shard="0")
        _, transport = self.upgrade()
        self.reactor.advance(self.timeout)
        self.links[0].calls[0][2].callback({"connections": 1})
        self.assertEqual((transport.value(), self.released), (b"", [transport]))
        self.assertEqual(sample("odinws_dispatch_total", shard="0"), dispatched + 1)

    def test_late_refusal_writes_nothing(self):
        """A refusal after the timeout writes nothing either (the client was let go of)."""
        _, transport = self.upgrade()
        self.reactor.advance(self.timeout)
        self.links[0].calls[0][2].errback(Failure(HandoffRefused("full")))
        self.assertEqual((transport.value(), self.released), (b"", [transport]))

    def test_channel_lost_after_sending(self):
        """
        A control channel that fails after the handoff was sent (the shard
        died, maybe after adopting the socket and writing its 101) gets the
        client no 503: the parent drops its copy, counted as reason="lost".
        """
        before = sample("odinws_handoffs_abandoned_total", reason="lost")
        _, transport = self.upgrade()
        self.links[0].calls[0][2].errback(Failure(error.ConnectionLost()))
        self.assertEqual((transport.value(), self.released), (b"", [transport]))
        self.assertEqual(sample("odinws_handoffs_abandoned_total", reason="lost"), before + 1)
        self.assertEqual(self.shards[0].connections, 0)

    def test_refused_in_time_answered(self):
        """A refusal before the timeout still gets the client 503 + Retry-After."""
        _, transport = self.upgrade()
        self.links[0].calls[0][2].errback(Failure(HandoffRefused("full")))
        r = self.response(transport)
        self.assertEqual((r.status, self.released), (503, []))
        self.assertIn("retry-after", r.headers)


class StalledShardTests(LivenessTestCase):
    def test_stale_stats_not_accepting(self):
        """
        A shard with no Stats report for stats_stale_after seconds (stopped
        with SIGSTOP, hung) is stalled and not accepting, also in /health;
        new clients go to the shard that still reports.
        """
        for _ in range(4):
            self.reactor.advance(1.0)
            self.report(1, connections=5)
        h = self.shards[0]
        self.assertEqual((h.stalled, h.accepting), (True, False))
        self.assertEqual((h.as_health()["stalled"], h.as_health()["accepting"]), (True, False))
        self.assertEqual([self.upgrade()[0] for _ in range(3)], [1, 1, 1])

    def test_reports_again_accepting(self):
        """A stalled shard that reports again (SIGCONT) is accepting again."""
        self.reactor.advance(3.5)
        self.report(1, connections=5)
        self.assertEqual(self.upgrade()[0], 1)
        self.report(0)
        self.assertFalse(self.shards[0].stalled)
        self.assertEqual(self.upgrade()[0], 0)

    def test_fresh_within_the_bound(self):
        """A shard whose last report is stats_stale_after old, not older, still accepts."""
        self.reactor.advance(3.0)
        self.assertEqual((self.shards[0].stalled, self.shards[0].accepting), (False, True))

    def test_all_stalled_no_shard(self):
        """With every shard stalled, an upgrade gets 503 no_shard at once, not after a timeout."""
        before = sample("odinws_rejected_connections_total", status="503", reason="no_shard")
        self.reactor.advance(4.0)
        _, transport = self.request(UPGRADE)
        self.assertEqual(self.response(transport).status, 503)
        self.assertEqual(sample("odinws_rejected_connections_total", status="503",
                                reason="no_shard"), before + 1)
        self.assertEqual([link.calls for link in self.links], [[], []])

    def test_stale_after_validated(self):
        """stats_stale_after below twice stats_interval is a one-line config error naming it."""
        from odin_ws.common.config import ConfigError
        e = self.assertRaises(ConfigError, make_settings, self.config,
                              supervisor__stats_interval=2.0, supervisor__stats_stale_after=3.0)
        self.assertTrue(str(e).startswith("supervisor.stats_stale_after:"))


class InFlightTests(LivenessTestCase):
    supervisor = dict(LivenessTestCase.supervisor, max_handoffs_in_flight=2)

    def test_capped_per_shard(self):
        """
        A shard with max_handoffs_in_flight handoffs unanswered gets no more
        (however empty it looks) until one is answered; then it takes the next.
        """
        self.report(1, connections=10)
        self.assertEqual([self.upgrade()[0] for _ in range(3)], [0, 0, 1])
        self.assertTrue(self.shards[0].saturated)
        self.links[0].calls[0][2].callback({"connections": 1})
        self.assertFalse(self.shards[0].saturated)
        self.assertEqual(self.upgrade()[0], 0)

    def test_cap_holds_past_the_timeout(self):
        """Handoffs that timed out still count against the cap until their calls complete."""
        self.report(1, connections=10)
        self.upgrade()
        self.upgrade()
        self.wait(self.timeout, loads=(0, 10))
        self.assertEqual(self.upgrade()[0], 1)

    def test_health_not_changed_by_in_flight(self):
        """A saturated shard still shows as accepting in /health (the cap is momentary)."""
        self.upgrade()
        self.upgrade()
        self.assertTrue(self.shards[0].as_health()["accepting"])
        r = self.response(self.request(get("/health"))[1])
        self.assertEqual(r.status, 200)
