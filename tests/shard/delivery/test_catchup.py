"""
Catch-up from history (L{odin_ws.shard.delivery.catchup} in the
L{odin_ws.shard.delivery.outbox.Outbox}), driven through a real shard with
fakes: a connection whose buffer is full falls behind instead of dropping,
and gets what it missed from history once it reads again; what history
cannot serve is told by a gap notice.
"""

from __future__ import annotations

import json
import time

from twisted.internet.address import IPv4Address

from odin_ws.common.events import Event
from odin_ws.common.twisted_internals import held
from odin_ws.shard.delivery.behind import Behind
from odin_ws.shard.delivery.gaps import gap_notice
from odin_ws.shard.history.holes import UNDECODABLE, Hole
from tests.helpers import ShardTestCase, StalledSocket, parse_frames, text
from tests.helpers.cases import ShardClient, _ports

TOPIC = "odin.trades"


class CatchUpTestCase(ShardTestCase):
    settings = {"kafka__topics": {TOPIC: "trade"},
                "outbound__max_buffer_bytes": 1024, "kafka__max_record_bytes": 1024,
                "outbound__policy": {"default": "drop"},
                "keepalive__ping_interval": 0}

    def setUp(self):
        super().setUp()
        self.next_offset = {0: 99, 1: 499}

    def event(self, token: str = "A", partition: int = 0, size: int = 40,
              age: float = 0.0) -> Event:
        """The next event of C{partition}, C{age} seconds old."""
        self.next_offset[partition] += 1
        offset = self.next_offset[partition]
        payload = b'{"n":%d,"pad":"%s"}' % (offset, b"x" * size)
        return Event.build(token, "trade", payload, int((time.time() - age) * 1000), TOPIC,
                           partition, offset, "ep1")

    def deliver(self, *events: Event) -> list[Event]:
        self.shard.delivery.deliver(list(events))
        return list(events)

    def stalled(self, *channels: str) -> ShardClient:
        client = self.connect(transport=StalledSocket(IPv4Address("TCP", "10.0.0.9",
                                                                  next(_ports))))
        client.send(text({"type": "subscribe", "channels": list(channels)}))
        client.transport.drain()
        client.messages()
        return client

    def read_all(self, client: ShardClient, rounds: int = 200) -> list[dict]:
        """The client reads until nothing more comes (catch-up runs a slice per turn)."""
        got: list[dict] = []
        for _ in range(rounds):
            client.transport.drain()
            self.clock.advance(0)
            client.transport.drain()
            new = client.messages()
            if not new and self.shard.stats.behind_now == 0:
                break
            got += new
        return got


def positions_of(events: list[Event]) -> list[str]:
    return [json.loads(e.envelope)["pos"] for e in events]


class CatchUpTests(CatchUpTestCase):
    def test_stalled_reader_gets_every_event_once_in_order(self):
        """
        A client that stops reading while ten times its buffer arrives,
        then reads again, gets every event of its channel exactly once and
        in order (the missed ones from history), with no gap notice; events
        delivered meanwhile and afterwards follow in order; nothing is
        counted as dropped.
        """
        c = self.stalled("odin.token.A.trade")
        sent = []
        for _ in range(20):
            sent += self.deliver(*(self.event("A", p) for p in (0, 1) for _ in range(5)))
            self.deliver(self.event("B"))      # another channel, not subscribed
        self.assertIsNotNone(c.proto.outbox.behind)
        got = self.read_all(c)
        sent += self.deliver(self.event("A", 0), self.event("A", 1))
        got += self.read_all(c)
        self.assertEqual([m["type"] for m in got], ["event"] * len(got))
        self.assertEqual(sorted(m["pos"] for m in got), sorted(positions_of(sent)))
        for p in ("0", "1"):
            mine = [m["data"]["n"] for m in got if m["pos"].split(":")[1] == p]
            self.assertEqual(mine, sorted(mine))
        stats = self.shard.stats
        self.assertEqual(stats.dropped["drop"], 0)
        self.assertGreater(stats.caught_up, 0)
        self.assertEqual((stats.behind_now, stats.gaps), (0, {}))
        self.assertIsNone(c.proto.outbox.behind)

    def test_falls_behind_with_nothing_queued(self):
        """
        A connection can fall behind with nothing of its own queued: its
        last frames were handed to Twisted, which holds what the client has
        not read (its producer not paused: below Twisted's high-water
        mark), and the next event does not fit. Once the client reads, it
        is caught up all the same, though no flush of the outbox follows.
        """
        c = self.stalled("odin.token.A.trade")
        box = c.proto.outbox
        sent = self.deliver(self.event("A", 0, size=600))
        self.clock.advance(0)
        self.assertEqual((box.queued(), box.paused), (0, False))
        self.assertGreater(held(c.transport), 0)
        sent += self.deliver(self.event("A", 0, size=600))
        self.assertIsNotNone(box.behind)
        self.assertEqual(box.queued(), 0)
        got = self.read_all(c)
        self.assertEqual([m["pos"] for m in got], positions_of(sent))
        self.assertIsNone(box.behind)

    def test_behind_holds_positions_not_frames(self):
        """While behind, the outbox queues no more event frames: it holds one position per stream."""
        c = self.stalled("odin.token.A.trade")
        for _ in range(50):
            self.deliver(self.event("A", 0), self.event("A", 1))
        box = c.proto.outbox
        queued = box.queued()
        for _ in range(200):
            self.deliver(self.event("A", 0), self.event("A", 1))
        self.assertEqual(box.queued(), queued)
        self.assertEqual(len(box.behind.streams), 2)
        self.assertLessEqual(queued, box.limit)

    def test_out_of_the_window_one_gap_per_stream_then_live(self):
        """
        A stalled client that history no longer covers gets exactly one gap
        notice (reason too_old) naming each stream it lost and the position
        from which it may recover, then live events; counted.
        """
        self.shard.history.configure(max_events=20, max_age=0, max_bytes=10**9,
                                     max_channels=100)
        c = self.stalled("odin.token.A.trade")
        first = self.deliver(self.event("A", 0), self.event("A", 1))
        for _ in range(100):
            self.deliver(self.event("A", 0), self.event("A", 1))
        got = self.read_all(c)
        gaps = [m for m in got if m["type"] == "gap"]
        self.assertEqual(len(gaps), 1)
        [gap] = gaps
        self.assertEqual(gap["reason"], "too_old")
        self.assertEqual(set(gap["streams"]), {f"{TOPIC}:0:ep1", f"{TOPIC}:1:ep1"})
        for stream, position in gap["streams"].items():
            self.assertTrue(position.startswith(stream + ":"))
        live = self.deliver(self.event("A", 0), self.event("A", 1))
        after = self.read_all(c)
        self.assertEqual([m["pos"] for m in after], positions_of(live))
        self.assertEqual(self.shard.stats.gaps, {"too_old": 2})
        self.assertEqual(self.shard.stats.fell_out, 1)
        # What came before the gap notice is in order and came once.
        events = [m["pos"] for m in got if m["type"] == "event"]
        self.assertEqual(len(events), len(set(events)))
        self.assertNotIn(positions_of(first)[0], events[len(events):])

    def test_keeping_up_client_takes_a_run_larger_than_its_buffer(self):
        """
        A client that reads as fast as it can (its transport takes every
        byte) gets one delivery (a merged catch-up of the hub) larger than
        its whole buffer in full, in order: the part that did not fit comes
        from history in the next turns, nothing is dropped.
        """
        c = self.connect()
        self.subscribe(c, "odin.token.A.trade")
        sent = self.deliver(*(self.event("A", 0) for _ in range(200)))
        got = c.messages()
        for _ in range(100):
            self.clock.advance(0)
            got += c.messages()
        self.assertEqual([m["pos"] for m in got], positions_of(sent))
        self.assertEqual(self.shard.stats.dropped["drop"], 0)

    def test_disconnect_policy_closes_when_out_of_the_window(self):
        """Under disconnect, a client history no longer covers is closed with 4008, not told."""
        self.reload_shard(**{"outbound.policy": {"default": "disconnect"},
                             "outbound.disconnect_grace": 1000.0})
        self.shard.history.configure(max_events=20, max_age=0, max_bytes=10**9,
                                     max_channels=100)
        c = self.stalled("odin.token.A.trade")
        for _ in range(100):
            self.deliver(self.event("A", 0))
        c.transport.drain()
        self.clock.advance(0)
        c.transport.drain()
        frames = c.frames()
        self.assertEqual((frames[-1][0], int.from_bytes(frames[-1][1][:2], "big")), (8, 4008))
        self.assertEqual([op for op, _ in frames[:-1]], [1] * (len(frames) - 1))
        self.assertNotIn(b'"gap"', b"".join(p for _, p in frames))
        self.assertEqual(self.shard.stats.slow_disconnects, 1)

    def test_disconnect_policy_catches_up_within_the_grace(self):
        """Under disconnect, a client that reads again within the grace catches up, stays open."""
        self.reload_shard(**{"outbound.policy": {"default": "disconnect"},
                             "outbound.disconnect_grace": 5.0})
        c = self.stalled("odin.token.A.trade")
        sent = []
        for _ in range(30):
            sent += self.deliver(self.event("A", 0))
        self.assertIsNotNone(c.proto.outbox.behind)
        got = self.read_all(c)
        self.clock.advance(10)
        self.assertTrue(c.open)
        self.assertEqual([m["pos"] for m in got], positions_of(sent))


    def test_conflate_without_a_frame_to_replace_catches_up(self):
        """
        Under conflate, a frame with nothing of its channel waiting to give
        way is not dropped: the connection falls behind and gets it (and
        every later one) from history; what conflation replaced is told.
        """
        self.reload_shard(**{"outbound.policy": {"default": "conflate"}})
        c = self.stalled("odin.token.*.trade")
        sent = []
        for token in ["T0", "T1", "T2", "T3"] + ["A"] * 5:   # A's replace A's: conflated
            sent += self.deliver(self.event(token, 0))
        self.assertGreater(self.shard.stats.conflated, 0)
        for n in range(4, 30):      # one per channel: nothing to replace
            sent += self.deliver(self.event(f"T{n}", 0))
        self.assertIsNotNone(c.proto.outbox.behind)
        got = self.read_all(c)
        positions = [m["pos"] for m in got if m["type"] == "event"]
        self.assertIn(positions_of(sent)[-1], positions)
        self.assertEqual(len(positions), len(set(positions)))
        self.assertEqual(self.shard.stats.dropped["conflate"], 0)
        conflated = [m for m in got if m["type"] == "gap"]
        self.assertEqual(sum(n for g in conflated for n in g["channels"].values()),
                         self.shard.stats.conflated)


class FilteredCatchUpTests(CatchUpTestCase):
    def test_catch_up_keeps_the_subscription_filter(self):
        """
        A client subscribed with a filter that falls behind gets, from
        history, only the events its filter passes, as it would have live:
        catch-up does not widen a subscription.
        """
        c = self.connect(transport=StalledSocket(IPv4Address("TCP", "10.0.0.9", next(_ports))))
        c.send(text({"type": "subscribe", "channels": ["odin.token.A.trade"],
                     "filter": {"big": True}}))
        c.transport.drain()
        self.assertEqual([m["type"] for m in c.messages()], ["subscribed"])
        sent = []
        for i in range(200):
            offset = 1000 + i
            payload = b'{"n":%d,"big":%s,"pad":"%s"}' % (
                offset, b"true" if i % 10 == 0 else b"false", b"x" * 40)
            sent += self.deliver(Event.build("A", "trade", payload, int(time.time() * 1000),
                                             TOPIC, 0, offset, "ep1"))
        self.assertIsNotNone(c.proto.outbox.behind)
        got = self.read_all(c)
        self.assertGreater(self.shard.stats.caught_up, 0)
        self.assertEqual([m["data"]["n"] for m in got], list(range(1000, 1200, 10)))
        self.assertEqual({m["data"]["big"] for m in got}, {True})


class StreamedRecoveryTests(CatchUpTestCase):
    def test_recovery_larger_than_the_buffer_is_streamed(self):
        """
        A recovery whose events do not fit the outbound buffer answers
        recovered: true and streams them from history as the socket
        drains, then live: every missed event once, in order (before, it
        was refused as too_large).
        """
        seen = self.deliver(self.event("A", 0))
        missed = []
        for _ in range(30):
            missed += self.deliver(self.event("A", 0), self.event("B", 0))
        c = self.connect()
        c.send(text({"type": "subscribe", "channels": ["odin.token.A.trade"],
                     "since": positions_of(seen), "id": 1}))
        got = c.messages()
        for _ in range(100):
            self.clock.advance(0)
            got += c.messages()
        live = self.deliver(self.event("A", 0))
        got += c.messages()
        ack, events = got[0], got[1:]
        want = [e for e in missed if e.token == "A"]
        self.assertEqual((ack["recovered"], ack["replayed"]), (True, len(want)))
        self.assertGreater(sum(len(e.envelope) for e in want), 1024)
        self.assertEqual([m["pos"] for m in events], positions_of(want + live))

    def test_since_while_behind_is_streamed(self):
        """
        A subscribe with since sent while the connection is behind (the
        client resubscribing after a gap notice while other streams are
        still caught up) is answered recovered: true and streamed: after
        the ack, every event after its positions exactly once, in order,
        then live (before, it was refused as too_large).
        """
        seen = self.deliver(self.event("A", 0), self.event("A", 1))
        c = self.stalled("odin.token.A.trade")
        missed = []
        for _ in range(20):
            missed += self.deliver(self.event("A", 0), self.event("A", 1))
        self.assertIsNotNone(c.proto.outbox.behind)
        c.send(text({"type": "subscribe", "channels": ["odin.token.A.trade"],
                     "since": positions_of(seen), "id": 1}))
        got = self.read_all(c)
        live = self.deliver(self.event("A", 0), self.event("A", 1))
        got += self.read_all(c)
        at = [m["type"] for m in got].index("subscribed")
        ack, after = got[at], got[at + 1:]
        self.assertEqual((ack["recovered"], ack["replayed"]), (True, len(missed)))
        self.assertEqual([m["type"] for m in after], ["event"] * len(after))
        for p in ("0", "1"):
            want = [pos for pos in positions_of(missed + live) if pos.split(":")[1] == p]
            self.assertEqual([m["pos"] for m in after if m["pos"].split(":")[1] == p], want)
        self.assertEqual(len(after), len(missed + live))

    def test_since_while_behind_over_other_subscriptions_is_refused(self):
        """
        While behind, a since subscribe that cannot be streamed (the
        connection holds other subscriptions) is answered too_large, even
        when its replay is small: its frames would be noted, not sent, so
        recovered: true would be a lie.
        """
        before = self.deliver(self.event("B", 0))
        replayed = self.deliver(self.event("A", 0), self.event("A", 0))
        c = self.stalled("odin.token.B.trade")
        for _ in range(20):
            self.deliver(self.event("B", 0))
        self.assertIsNotNone(c.proto.outbox.behind)
        c.send(text({"type": "subscribe", "channels": ["odin.token.A.trade"],
                     "since": positions_of(before), "id": 2}))
        got = self.read_all(c)
        [ack] = [m for m in got if m["type"] == "subscribed"]
        self.assertEqual((ack["recovered"], ack["reason"]), (False, "too_large"))
        self.assertFalse(set(positions_of(replayed)) & {m.get("pos") for m in got})

    def test_not_streamed_over_other_subscriptions(self):
        """
        A connection holding other subscriptions keeps the bounded answer
        (too_large): streaming would send their events again.
        """
        seen = self.deliver(self.event("A", 0))
        for _ in range(30):
            self.deliver(self.event("A", 0))
        c = self.connect()
        self.subscribe(c, "odin.token.B.trade")
        c.send(text({"type": "subscribe", "channels": ["odin.token.A.trade"],
                     "since": positions_of(seen)}))
        [ack] = c.messages()
        self.assertEqual((ack["recovered"], ack["reason"]), (False, "too_large"))


class StaleCatchUpTests(CatchUpTestCase):
    settings = dict(CatchUpTestCase.settings, outbound__max_event_age=60.0)

    def test_catch_up_skips_events_that_became_stale(self):
        """
        Events fresh when delivered but older than outbound.max_event_age by
        the time a stalled client is caught up are not sent as if live: the
        client gets one stale gap notice per stream, naming the position
        before the first it skipped, then the live events; counted.
        """
        c = self.stalled("odin.token.A.trade")
        old = []
        for _ in range(20):
            old += self.deliver(self.event("A", 0, age=50), self.event("A", 1, age=50))
        box = c.proto.outbox
        self.assertIsNotNone(box.behind)
        first_noted = dict(box.behind.streams)
        self.shard.backlog.clock = lambda: time.time() + 20     # now they are 70 s old
        got = self.read_all(c)
        live = self.deliver(self.event("A", 0), self.event("A", 1))
        got += self.read_all(c)
        gaps = [m for m in got if m["type"] == "gap"]
        self.assertEqual([g["reason"] for g in gaps], ["stale", "stale"])
        self.assertEqual({s: p for g in gaps for s, p in g["streams"].items()}, {
            f"{TOPIC}:{p}:ep1": f"{TOPIC}:{p}:ep1:{first_noted[(TOPIC, p)][1]}" for p in (0, 1)})
        events = [m["pos"] for m in got if m["type"] == "event"]
        # Only what went out before the client fell behind, then live.
        sent_before = [p for p in positions_of(old) if p in events]
        self.assertEqual(events, sent_before + positions_of(live))
        self.assertLess(len(sent_before), len(old))
        self.assertEqual(self.shard.stats.gaps, {"stale": 2})

    def test_stale_live_event_is_told_after_the_events_owed_before_it(self):
        """
        A stale event arriving while its subscriber is behind is told by the
        catch-up, in its place: after every event of its stream caught up
        before it (a notice at once would overtake them); the fresh events
        after it follow.
        """
        c = self.stalled("odin.token.A.trade")
        fresh = []
        for _ in range(20):
            fresh += self.deliver(self.event("A", 0))
        self.assertIsNotNone(c.proto.outbox.behind)
        stale = self.deliver(self.event("A", 0, age=120))
        after = self.deliver(self.event("A", 0))
        got = self.read_all(c)
        kinds = [m["type"] for m in got]
        self.assertEqual(kinds.count("gap"), 1)
        at = kinds.index("gap")
        self.assertEqual([m["pos"] for m in got[:at]], positions_of(fresh))
        self.assertEqual(got[at]["reason"], "stale")
        before_stale = positions_of(fresh)[-1]
        self.assertEqual(list(got[at]["streams"].values()), [before_stale])
        self.assertEqual([m["pos"] for m in got[at + 1:]], positions_of(after))
        self.assertNotIn(positions_of(stale)[0], [m.get("pos") for m in got])


class BehindTests(ShardTestCase):
    def test_note_keeps_the_first_position_per_stream(self):
        """A stream is noted once, just before the first event not queued; later ones change nothing."""
        behind = Behind()
        for offset in (10, 11, 15):
            behind.note(Event.build("A", "trade", b"{}", 0, TOPIC, 3, offset, "e"))
        behind.note(Event.build("A", "trade", b"{}", 0, TOPIC, 4, 7, "e"))
        self.assertEqual(behind.streams, {(TOPIC, 3): ("e", 9), (TOPIC, 4): ("e", 6)})

    def test_gap_notice_names_streams_and_positions(self):
        """The gap message: each stream with the position to recover from; none before offset 0."""
        [(_, payload)] = parse_frames(gap_notice(
            "too_old", {(TOPIC, 3): ("e", 41), (TOPIC, 4): ("e", -1), (TOPIC, 5): None}))
        notice = json.loads(payload)
        self.assertEqual(notice, {"type": "gap", "reason": "too_old", "streams": {
            f"{TOPIC}:3:e": f"{TOPIC}:3:e:41", f"{TOPIC}:4:e": None, f"{TOPIC}:5:0": None}})


class CatchUpHoleTests(CatchUpTestCase):
    def thirty_with_a_hole(self) -> None:
        """Thirty deliveries on odin.token.A.trade, the sixteenth a hole."""
        for i in range(30):
            if i == 15:
                self.next_offset[0] += 1
                self.deliver(Hole("invalid_json", "A", "trade", int(time.time() * 1000), TOPIC,
                                  0, self.next_offset[0], "ep1"))
            else:
                self.deliver(self.event("A"))

    def test_hole_caught_up_is_told_and_counted(self):
        """
        A hole (an undecodable record) among what a stalled reader missed
        reaches it from history as its gap message, in place, and counts
        once in odinws_gaps_notified_total{reason="undecodable"} (when live
        delivery sent it, not again when catch-up does).
        """
        c = self.stalled("odin.token.A.trade")
        self.thirty_with_a_hole()
        self.assertIsNotNone(c.proto.outbox.behind)
        got = self.read_all(c)
        self.assertEqual([m["type"] for m in got].count("gap"), 1)
        self.assertEqual(self.shard.stats.gaps, {UNDECODABLE: 1})

    def test_hole_in_a_streamed_recovery_is_counted(self):
        """
        A recovery too large for the buffer, streamed from history, tells
        the hole it crosses and counts it once.
        """
        first = self.deliver(self.event("A"))[0]
        self.thirty_with_a_hole()
        c = self.connect(transport=StalledSocket(IPv4Address("TCP", "10.0.0.9", next(_ports))))
        c.send(text({"type": "subscribe", "channels": ["odin.token.A.trade"],
                     "since": positions_of([first])}))
        got = self.read_all(c)
        self.assertTrue(got[0]["recovered"], got[0])
        self.assertEqual([m["type"] for m in got].count("gap"), 1)
        self.assertEqual(self.shard.stats.gaps, {UNDECODABLE: 1})

    def hole(self, token: str = "A", partition: int = 0) -> Hole:
        """The next record of C{partition}, undecodable."""
        self.next_offset[partition] += 1
        return Hole("invalid_json", token, "trade", int(time.time() * 1000), TOPIC, partition,
                    self.next_offset[partition], "ep1")

    def test_hole_arriving_live_during_a_streamed_recovery_is_counted_once(self):
        """
        A hole that arrives live while a streamed recovery of its stream
        runs is told once (by the catch-up, in place) and counted once:
        live delivery counted the connection when it noted it, so the
        replay does not count it again (it did: 2 for one notice).
        """
        first = self.deliver(self.event("A"))[0]
        for _ in range(30):
            self.deliver(self.event("A"))
        c = self.connect(transport=StalledSocket(IPv4Address("TCP", "10.0.0.9", next(_ports))))
        c.send(text({"type": "subscribe", "channels": ["odin.token.A.trade"],
                     "since": positions_of([first])}))
        self.assertIsNotNone(c.proto.outbox.behind)
        hole = self.deliver(self.hole())[0]
        self.deliver(self.event("A"))
        got = self.read_all(c)
        self.assertTrue(got[0]["recovered"], got[0])
        gaps = [m for m in got if m["type"] == "gap"]
        self.assertEqual([g["streams"] for g in gaps], [json.loads(hole.envelope)["streams"]])
        self.assertEqual(self.shard.stats.gaps, {UNDECODABLE: 1})

    def test_hole_noted_while_behind_then_recovered_is_counted_once(self):
        """
        A hole noted while the connection is behind (counted by live
        delivery), then a subscribe with since from before it (streamed
        while behind): told once, counted once.
        """
        seen = self.deliver(self.event("A"))
        c = self.stalled("odin.token.A.trade")
        for _ in range(20):
            self.deliver(self.event("A"))
        self.assertIsNotNone(c.proto.outbox.behind)
        self.deliver(self.hole())
        c.send(text({"type": "subscribe", "channels": ["odin.token.A.trade"],
                     "since": positions_of(seen), "id": 1}))
        got = self.read_all(c)
        self.assertEqual([m["type"] for m in got].count("gap"), 1)
        self.assertEqual(self.shard.stats.gaps, {UNDECODABLE: 1})


class CatchUpAfterFailedDeliveryTests(CatchUpTestCase):
    """
    Catch-up while runs of a delivery that raised before its write still
    wait for the C send loop (the end of the turn writes them).
    """

    settings = {**CatchUpTestCase.settings, "outbound__native": "on"}

    def test_catch_up_end_takes_no_kept_run_twice(self):
        """
        The stalled reader drains while such runs wait: it gets every event
        once, in order (before, the catch-up read their events from history,
        went live, then the runs were written to it again).
        """
        c = self.stalled("odin.token.A.trade")
        sent = []
        for _ in range(9):
            sent += self.deliver(self.event("A"))
        self.assertIsNotNone(c.proto.outbox.behind)
        flush = self.shard.fanout.flush

        def failing() -> bool:
            self.shard.fanout.flush = flush
            raise RuntimeError("a delivery's bug")
        self.shard.fanout.flush = failing
        more = [self.event("A"), self.event("A")]
        self.assertRaises(RuntimeError, self.deliver, *more)
        got = self.read_all(c)
        self.assertEqual([m["pos"] for m in got], positions_of(sent + more))


class PythonLoopCatchUpTests(CatchUpTests):
    """L{CatchUpTests} with the pure-Python send loop (the others run the C loop where built)."""

    settings = {**CatchUpTestCase.settings, "outbound__native": "off"}


class PythonLoopCatchUpAfterFailedDeliveryTests(CatchUpAfterFailedDeliveryTests):
    """L{CatchUpAfterFailedDeliveryTests} with the pure-Python send loop (nothing is kept)."""

    settings = {**CatchUpTestCase.settings, "outbound__native": "off"}
