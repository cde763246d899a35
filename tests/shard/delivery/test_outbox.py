"""
Tests for L{odin_ws.shard.delivery.outbox}: the slow-client policies (drop, conflate,
disconnect) with memory bounds, Twisted's pauses and resumes, and no data
frame after a close frame.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from odin_ws.shard.delivery.fanout import Fanout
from odin_ws.shard.delivery.frames import Chunk
from odin_ws.shard.delivery.outbox import Outbox
from odin_ws.shard.delivery.writestats import WriteStats
from tests.helpers import (
    OPEN,
    FakeProtocol,
    SendLoop,
    StalledTransport,
    event,
    events_in,
    gaps_in,
    handshaken_protocol,
    parse_frames,
    policies,
)


class PolicyTests(SendLoop, SynchronousTestCase):
    """Slow-client policies, with Twisted's real buffer over a stalled fake kernel."""

    frame_size = len(event("a", 0))

    def setUp(self):
        self.clock = Clock()
        self.stats = WriteStats()
        self.fanout = Fanout(self.clock, self.stats, native=self.send_loop())
        self.healthy = [self.make(StringTransport(), "drop") for _ in range(2)]
        self.disconnects = 0

    def make(self, transport, policy: str, limit: int = 1000, grace: float = 5.0) -> Outbox:
        def slow():
            self.disconnects += 1
        return Outbox(FakeProtocol(transport), self.fanout, lambda t: policy, limit, grace,
                      slow)

    def run_turns(self, box: Outbox, turns: int, channels=("a",), per_turn: int = 10,
                  limit: int = 1000, start: int = 0) -> list[tuple[str, int]]:
        """Publish turns of events to C{box} and the healthy outboxes; what was published."""
        published = []
        n = start
        for _ in range(turns):
            turn = []
            for _ in range(per_turn):
                channel = channels[n % len(channels)]
                turn.append((event(channel, n), channel, "t"))
                published.append((channel, n))
                n += 1
            self.send_turn(turn, [box] + self.healthy)
            self.fanout.flush()
            self.assertLessEqual(box.buffered(), limit + self.frame_size)
        return published

    def send_turn(self, turn: list, outboxes: list) -> None:
        """One turn's events, each (frame, channel, event_type), published one by one."""
        for frame, channel, event_type in turn:
            self.fanout.publish(frame, channel, event_type, outboxes)

    def assertHealthyGot(self, published):
        for box in self.healthy:
            self.assertEqual(events_in(box.transport.value()), published)

    def test_dropKeepsMemoryBoundedAndCounts(self):
        """Drop: bytes waiting stay within the limit, the rest is dropped and counted."""
        t = StalledTransport()
        box = self.make(t, "drop")
        published = self.run_turns(box, 30)
        self.assertHealthyGot(published)
        self.assertGreater(self.stats.dropped["drop"], 0)
        t.drain()
        got = events_in(bytes(t.wire))
        self.assertEqual(got, sorted(set(got), key=lambda e: e[1]))
        self.assertEqual(len(got) + self.stats.dropped["drop"], len(published))
        self.assertEqual(box.buffered(), 0)
        self.assertGreaterEqual(self.stats.high_water, 1000 - self.frame_size)

    def test_conflateKeepsLatestPerChannelInOrder(self):
        """
        Conflate: waiting frames of a channel are replaced by its newest; the
        client, once it reads, sees each channel in order, ending with its
        latest event, within the memory bound.
        """
        t = StalledTransport()
        box = self.make(t, "conflate")
        channels = ("a", "b", "c")
        # A first small turn puts a little in Twisted's buffer; later turns queue.
        published = self.run_turns(box, 1, channels, per_turn=3)
        published += self.run_turns(box, 20, channels, start=3)
        self.assertHealthyGot(published)
        self.assertGreater(self.stats.conflated, 0)
        self.assertEqual(self.stats.dropped["conflate"], 0)
        t.drain()
        got = events_in(bytes(t.wire))
        for channel in channels:
            mine = [n for c, n in got if c == channel]
            self.assertEqual(mine, sorted(set(mine)))
            self.assertEqual(mine[-1], max(n for c, n in published if c == channel))
        self.assertEqual(len(got) + self.stats.conflated, len(published))
        # Conflation says it skipped: gap notices count every replaced frame, per channel.
        gaps = gaps_in(bytes(t.wire))
        self.assertTrue(gaps)
        self.assertEqual({g["reason"] for g in gaps}, {"conflated"})
        self.assertEqual(sum(n for g in gaps for n in g["channels"].values()),
                         self.stats.conflated)

    def test_conflateDropsWhenNothingToReplace(self):
        """Conflate with no waiting frame of the channel and no room: dropped and counted."""
        t = StalledTransport()
        box = self.make(t, "conflate")
        box.push(event("a", 0, pad=900), "a", "t")
        self.fanout.flush()                      # all of it now in Twisted's buffer
        box.push(event("b", 1), "b", "t")
        self.assertEqual(self.stats.dropped["conflate"], 1)
        self.assertEqual(box.queued(), 0)

    def test_pausedAtTwistedHighWater(self):
        """Past Twisted's 64 KiB high-water mark frames wait here until it drains."""
        t = StalledTransport()
        box = self.make(t, "drop", limit=1 << 20)
        big = [event("a", i, pad=20000) for i in range(4)]
        for f in big:
            box.push(f, "a", "t")
        self.fanout.flush()
        self.assertTrue(box.paused)
        self.assertTrue(t.producerPaused)
        box.push(event("a", 4), "a", "t")
        self.fanout.flush()
        self.assertEqual(self.stats.writes, 1)
        t.drain()
        self.assertFalse(box.paused)
        self.assertEqual([n for _, n in events_in(bytes(t.wire))], list(range(5)))

    def test_resumeWhileClosingReleasesTransport(self):
        """
        A connection closed (loseConnection) while the Outbox is paused: on
        resume the Outbox closes and unregisters, so Twisted can finish the
        close, and what waited is not written.
        """
        t = StalledTransport()
        box = self.make(t, "drop", limit=1 << 20)
        box.push(event("a", 0, pad=70000), "a", "t")
        self.fanout.flush()
        box.push(event("a", 1), "a", "t")
        self.assertTrue(box.paused)
        t.loseConnection()
        t.drain()
        self.assertTrue(box.closed)
        self.assertIsNone(t.producer)
        self.assertEqual([n for _, n in events_in(bytes(t.wire))], [0])

    def test_disconnectAfterGraceByTimer(self):
        """Disconnect: over the limit for the grace period, closed once by the timer."""
        t = StalledTransport()
        box = self.make(t, "disconnect")
        published = self.run_turns(box, 3)
        self.assertGreater(self.stats.dropped["disconnect"], 0)
        self.assertEqual(self.disconnects, 0)
        self.clock.advance(4.9)
        self.assertEqual(self.disconnects, 0)
        self.clock.advance(0.1)
        self.assertEqual((self.disconnects, self.stats.slow_disconnects), (1, 1))
        self.assertTrue(box.closed)
        self.assertIsNone(t.producer)
        self.assertEqual(box.queued(), 0)
        published += self.run_turns(box, 3, start=len(published))
        self.clock.advance(10)
        self.assertEqual(self.disconnects, 1)
        self.assertHealthyGot(published)

    def test_disconnectOnLaterPushRunsAfterThePublishLoop(self):
        """A push past the grace closes the connection, its callback running at flush."""
        t = StalledTransport()
        box = self.make(t, "disconnect")
        self.run_turns(box, 3)
        self.clock.rightNow += 5.0              # the push comes before the timer runs
        self.fanout.publish(event("a", 999), "a", "t", [box])
        # The C loop keeps the run until the write: the push (and close) happen there.
        self.assertEqual(box.closed, not self.native)
        self.assertEqual(self.disconnects, 0)
        self.fanout.flush()
        self.assertTrue(box.closed)
        self.assertEqual(self.disconnects, 1)
        self.clock.advance(0)
        self.assertEqual((self.disconnects, self.stats.slow_disconnects), (1, 1))

    def test_disconnectSparedWhenClientCatchesUp(self):
        """A client that drains within the grace period is not closed."""
        t = StalledTransport()
        box = self.make(t, "disconnect")
        self.run_turns(box, 3)
        self.clock.advance(2)
        t.drain()
        self.clock.advance(10)
        self.assertEqual(self.disconnects, 0)
        self.assertFalse(box.closed)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_trackingFollowsPolicyState(self):
        """
        Outbox.tracking, which keeps Fanout's inline flush off an outbox,
        is true while a conflation index or a disconnect grace is kept,
        and false again once the queue is written or the client caught up.
        """
        t = StalledTransport()
        box = self.make(t, "conflate")
        self.assertFalse(box.tracking)
        self.run_turns(box, 5)
        self.assertTrue(box.tracking)
        t.drain()
        box.push(event("a", 1000), "a", "t")    # an index may outlive the queue until then
        self.fanout.flush()
        self.assertEqual((box.queued(), box.tracking), (0, False))
        t = StalledTransport()
        box = self.make(t, "disconnect")
        self.run_turns(box, 3)
        self.assertTrue(box.tracking)
        t.drain()
        self.clock.advance(10)      # the grace timer finds the client caught up
        self.assertEqual((box.closed, box.tracking), (False, False))

    def test_emptyOutboxTakesOneFrameOfAnySize(self):
        """
        A frame larger than outbound.max_buffer_bytes reaches every client
        with nothing waiting, under every policy: it is not counted as a
        slow-client drop, and under disconnect nobody is closed (issue 16:
        a 300 KB record reached nobody and closed every subscriber with
        4008). A client with something waiting still gets the policy, so
        what waits stays bounded by the limit plus one frame.
        """
        big = event("a", 1, pad=3000)
        self.assertGreater(len(big), 1000)
        for policy in ("drop", "conflate", "disconnect"):
            boxes = [self.make(StringTransport(), policy) for _ in range(3)]
            self.send_turn([(big, "a", "t")], boxes)
            self.fanout.flush()
            self.clock.advance(10)
            for box in boxes:
                self.assertEqual(events_in(box.transport.value()), [("a", 1)], policy)
                self.assertFalse(box.closed, policy)
        self.assertEqual(dict(self.stats.dropped), {"drop": 0, "conflate": 0, "disconnect": 0})
        self.assertEqual((self.disconnects, self.stats.slow_disconnects), (0, 0))
        t = StalledTransport()
        box = self.make(t, "drop")
        t.producerPaused = box.paused = True     # a small frame already waits
        self.send_turn([(event("a", 2), "a", "t"), (big, "a", "t")], [box])
        self.fanout.flush()
        self.assertEqual(self.stats.dropped["drop"], 1)
        self.assertLessEqual(box.buffered(), 1000 + len(big))


class RunPolicyTests(PolicyTests):
    """The policies when events come as runs (publish_run), as the shard sends them."""

    def send_turn(self, turn: list, outboxes: list) -> None:
        self.fanout.publish_run(turn, outboxes)

    def test_runWithoutRoomTakenFrameByFrame(self):
        """
        An outbox without room for a whole run takes its frames one by one:
        those that fit, in order, the rest dropped and counted; others get all.
        """
        t = StalledTransport()
        box = self.make(t, "drop", limit=3 * self.frame_size)
        t.producerPaused = box.paused = True     # nothing leaves: only the queue counts
        run = [(event("a", n), "a", "t") for n in range(10)]
        self.fanout.publish_run(run, [box] + self.healthy)
        self.fanout.flush()
        self.assertEqual(box.queue[1::2], ["a", "a", "a"])
        self.assertEqual(self.stats.dropped["drop"], 7)
        self.assertHealthyGot([("a", n) for n in range(10)])
        box.resumeProducing()
        t.drain()
        self.assertEqual(events_in(bytes(t.wire)), [("a", 0), ("a", 1), ("a", 2)])

    def test_conflateSplitsWaitingRuns(self):
        """Runs waiting in the queue are split so conflation keeps the newest per channel."""
        t = StalledTransport()
        box = self.make(t, "conflate", limit=10 * self.frame_size)
        t.producerPaused = box.paused = True
        first = [(event(c, n), c, "t") for n, c in enumerate("abab")]
        self.fanout.publish_run(first, [box])
        self.fanout.flush()
        self.assertIsInstance(box.queue[1], Chunk)
        for n in range(4, 16):
            c = "ab"[n % 2]
            self.fanout.publish(event(c, n), c, "t", [box])
        self.fanout.flush()
        self.assertGreater(self.stats.conflated, 0)
        box.resumeProducing()
        t.drain()
        got = events_in(bytes(t.wire))
        for channel in "ab":
            mine = [n for c, n in got if c == channel]
            self.assertEqual(mine, sorted(set(mine)))
            self.assertEqual(mine[-1], 14 if channel == "a" else 15)
        self.assertEqual(len(got) + self.stats.conflated, 16)
        self.assertEqual(self.stats.delivered, len(got))


class ClosedProtocolTests(SendLoop, SynchronousTestCase):
    def test_noDataFrameAfterCloseFrame(self):
        """
        Frames queued when Autobahn sends its close frame are discarded: the
        close frame is the last frame on the wire, even after a resume.
        """
        proto, transport = handshaken_protocol()
        fanout = Fanout(Clock(), WriteStats(), native=self.send_loop())
        box = Outbox(proto, fanout, policies(), 1 << 20, 5.0, lambda: None)
        box.push(event("a", 1), "a", "t")
        fanout.flush()
        box.push(event("a", 2), "a", "t")
        proto.sendClose(4008, "slow consumer")
        self.assertNotEqual(proto.state, OPEN)
        fanout.flush()
        box.push(event("a", 3), "a", "t")
        box.resumeProducing()
        fanout.flush()
        frames = parse_frames(transport.value())
        self.assertEqual([op for op, _ in frames], [1, 8])
        self.assertEqual(frames[1][1][:2], (4008).to_bytes(2, "big"))

    def test_slowDisconnectThroughAutobahn(self):
        """The shard's callback (sendClose 4008) runs once; no data frame follows it."""
        proto, transport = handshaken_protocol()
        clock = Clock()
        fanout = Fanout(clock, WriteStats(), native=self.send_loop())
        box = Outbox(proto, fanout, policies(t="disconnect"), 1000, 1.0,
                     lambda: proto.sendClose(4008, "slow consumer"))
        box.pauseProducing()                     # as Twisted would for a stalled client
        for i in range(50):
            box.push(event("a", i), "a", "t")
        fanout.flush()
        clock.advance(1.0)
        fanout.flush()
        frames = parse_frames(transport.value())
        self.assertEqual([op for op, _ in frames], [8])
        self.assertIsNone(transport.producer)


class NativePolicyTests(PolicyTests):
    """L{PolicyTests} with the C send loop handing the slow clients back."""

    native = True


class NativeRunPolicyTests(RunPolicyTests):
    """L{RunPolicyTests} with the C send loop handing the slow clients back."""

    native = True


class NativeClosedProtocolTests(ClosedProtocolTests):
    """L{ClosedProtocolTests} with the C send loop."""

    native = True
