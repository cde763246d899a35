"""Tests for L{odin_ws.shard.history.store} and L{odin_ws.shard.history.positions}."""

from __future__ import annotations

import random
import tracemalloc

from twisted.trial.unittest import SynchronousTestCase

from odin_ws.common.events import Event
from odin_ws.shard.history import positions
from odin_ws.shard.history.partitionlog import CHANNEL_OVERHEAD, EVENT_OVERHEAD
from odin_ws.shard.history.store import (
    AHEAD,
    NOT_LOADED,
    OTHER_EPOCH,
    TOO_OLD,
    UNKNOWN,
    History,
)


def ev(token: str, offset: int, *, etype: str = "trade", topic: str = "t", partition: int = 0,
       ts: int = 1_000_000, pad: int = 10, epoch: str = "e") -> Event:
    return Event.build(token, etype, b'"' + b"x" * pad + b'"', ts, topic, partition, offset,
                       epoch)


class Clock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


ALL = [("*", "*")]


class PositionTests(SynchronousTestCase):
    def test_round_trip(self):
        """A position encodes topic, partition, epoch and offset and decodes to the same."""
        text = positions.encode("odin.trades", 3, "k2f9", 12345)
        self.assertEqual(text, "odin.trades:3:k2f9:12345")
        self.assertEqual(positions.decode(text), ("odin.trades", 3, "k2f9", 12345))

    def test_malformed_refused(self):
        """Anything but topic:partition:epoch:offset is refused with InvalidPosition."""
        for bad in (None, 5, "", "t:1:e", "t:1:e:-1", "t:x:e:1", "t:1:E!:1", "t 1:1:e:1",
                    "t:1:e:1:2", "t:" + "9" * 12 + ":e:1", "x" * 400, "t:1::1"):
            self.assertRaises(positions.InvalidPosition, positions.decode, bad)

    def test_epoch_depends_on_identity(self):
        """Another cluster or topic id gives another epoch; nothing known gives '0'."""
        a = positions.epoch_of("cluster-a", "topic-id-1")
        self.assertEqual(a, positions.epoch_of("cluster-a", "topic-id-1"))
        self.assertNotEqual(a, positions.epoch_of("cluster-b", "topic-id-1"))
        self.assertNotEqual(a, positions.epoch_of("cluster-a", "topic-id-2"))
        self.assertEqual(positions.epoch_of("", ""), "0")


class ReplayTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.h = History(max_events=5, max_age=3600, max_bytes=10**9, max_channels=100,
                         clock=self.clock)

    def fill(self, offsets, **kw):
        for o in offsets:
            self.h.add(ev("A" if o % 2 else "B", o, epoch="e1", **kw))

    def test_replays_after_position_matching_patterns(self):
        """Events after the client's offset that match its patterns come back in order."""
        self.fill(range(10, 15))
        got, reason = self.h.replay({("t", 0): ("e1", 11)}, ALL)
        self.assertEqual(([e.offset for e in got], reason), ([12, 13, 14], None))
        got, _ = self.h.replay({("t", 0): ("e1", 11)}, [("A", "*")])
        self.assertEqual([e.offset for e in got], [13])
        got, _ = self.h.replay({("t", 0): ("e1", 14)}, ALL)
        self.assertEqual(got, [])

    def test_too_old(self):
        """A position whose successors were evicted is not recovered (too_old)."""
        self.fill(range(10, 20))          # count bound 5: 15..19 kept
        self.assertEqual(self.h.replay({("t", 0): ("e1", 13)}, ALL), (None, TOO_OLD))
        got, reason = self.h.replay({("t", 0): ("e1", 14)}, ALL)
        self.assertEqual(([e.offset for e in got], reason), ([15, 16, 17, 18, 19], None))

    def test_first_seen_event_sets_the_floor(self):
        """
        Before the first event this shard saw nothing is known: an older
        position is not_loaded (never loaded here), not too_old (evicted);
        once the log has evicted, older positions are too_old.
        """
        self.fill([10])
        self.assertEqual(self.h.replay({("t", 0): ("e1", 8)}, ALL), (None, NOT_LOADED))
        self.assertEqual(self.h.replay({("t", 0): ("e1", 9)}, ALL)[1], None)
        self.fill(range(11, 20))          # count bound 5: 10..14 evicted
        self.assertEqual(self.h.replay({("t", 0): ("e1", 8)}, ALL), (None, TOO_OLD))

    def test_backfilled_log_is_the_window(self):
        """
        Below what the warm-up read back (the history's window) is too_old;
        a partition of which nothing is retained is not_loaded while the
        warm-up still reads, unknown_partition after.
        """
        self.h.backfill([ev("A", o, epoch="e1") for o in range(10, 13)])
        self.assertEqual(self.h.replay({("t", 0): ("e1", 5)}, ALL), (None, TOO_OLD))
        self.h.loading = lambda: True
        self.assertEqual(self.h.replay({("t", 1): ("e1", 5)}, ALL), (None, NOT_LOADED))
        self.h.loading = lambda: False
        self.assertEqual(self.h.replay({("t", 1): ("e1", 5)}, ALL), (None, UNKNOWN))

    def test_ahead_epoch_unknown(self):
        """Past the end, another incarnation, or an unknown partition: not recovered."""
        self.fill(range(10, 13))
        self.assertEqual(self.h.replay({("t", 0): ("e1", 13)}, ALL), (None, AHEAD))
        self.assertEqual(self.h.replay({("t", 0): ("e2", 11)}, ALL), (None, OTHER_EPOCH))
        self.assertEqual(self.h.replay({("t", 1): ("e1", 11)}, ALL), (None, UNKNOWN))

    def test_recreated_topic_restarts_the_log(self):
        """Offsets going back (or a new epoch) start the partition's log afresh."""
        self.fill(range(100, 103))
        self.h.add(ev("A", 0, epoch="e2"))
        self.assertEqual(self.h.epoch("t", 0), "e2")
        self.assertEqual(self.h.replay({("t", 0): ("e1", 101)}, ALL), (None, OTHER_EPOCH))
        self.h.add(ev("A", 1, epoch="e2"))
        self.h.add(ev("A", 0, epoch="e2"))  # offsets back again, same epoch: broker replaced
        self.assertEqual(self.h.events, 1)
        self.assertEqual(self.h.replay({("t", 0): ("e2", 1)}, ALL), (None, AHEAD))

    def test_age_bound(self):
        """Events older than max_age (by Kafka timestamp) are dropped, the newest is kept."""
        h = History(max_events=100, max_age=10, max_bytes=10**9, max_channels=10,
                    clock=self.clock)
        now_ms = int(self.clock.now * 1000)
        for o, age in enumerate((30, 20, 5, 1)):
            h.add(ev("A", o, ts=now_ms - age * 1000, epoch="e"))
        self.assertEqual([e.offset for e in h.replay({("t", 0): ("e", 1)}, ALL)[0]], [2, 3])
        self.assertEqual(h.evicted["age"], 2)


class BudgetTests(SynchronousTestCase):
    def test_budget_evicts_oldest_across_partitions(self):
        """Over the byte budget the globally oldest events go first, whatever the partition."""
        size = len(ev("A", 0, pad=100).envelope) + EVENT_OVERHEAD
        # Four events, and the channel's run in each partition's index.
        h = History(max_events=1000, max_age=0, max_bytes=size * 4 + 2 * CHANNEL_OVERHEAD,
                    max_channels=10,
                    clock=Clock())
        for i in range(6):
            h.add(ev("A", i, partition=i % 2, ts=1000 + i, pad=100, epoch="e"))
        self.assertLessEqual(h.bytes, h.max_bytes)
        self.assertEqual(h.events, 4)
        self.assertEqual(h.evicted["budget"], 2)
        # partition 0 lost offset 0, partition 1 lost offset 1
        self.assertEqual(h.replay({("t", 0): ("e", 0)}, ALL)[1], None)
        self.assertEqual(h.replay({("t", 1): ("e", 0)}, ALL), (None, TOO_OLD))

    def test_accounting_under_a_long_stream(self):
        """100k events through a small budget: the accounted bytes never pass the budget."""
        h = History(max_events=10**6, max_age=0, max_bytes=256 * 1024, max_channels=50,
                    clock=Clock())
        for i in range(100_000):
            h.add(ev(f"T{i % 97}", i, partition=i % 7, ts=i, pad=i % 300, epoch="e"))
            if i % 997 == 0:
                self.assertLessEqual(h.bytes, h.max_bytes)
        self.assertEqual(h.bytes, sum(log.bytes for _, _, log in h.partitions()))
        self.assertLessEqual(h.channels, 50)

    def test_overhead_covers_real_memory(self):
        """EVENT_OVERHEAD is at least what one retained event costs beyond its envelope."""
        h = History(max_events=10**6, max_age=0, max_bytes=10**9, max_channels=10**6,
                    clock=Clock())
        # One channel, so the latest-event cache does not grow with them.
        events = [ev("T", i, pad=50) for i in range(20_000)]
        tracemalloc.start()
        before = tracemalloc.take_snapshot()
        for e in events:
            h.add(e)
        after = tracemalloc.take_snapshot()
        tracemalloc.stop()
        grown = sum(s.size_diff for s in after.compare_to(before, "filename"))
        # The events themselves existed before; what history adds is its lists
        # and the latest-event cache. Their own cost is in EVENT_OVERHEAD too.
        event_cost = 0
        for e in events[:100]:
            event_cost += (e.__sizeof__() + e.channel.__sizeof__() + e.token.__sizeof__()
                           + e.event_type.__sizeof__() + e.topic.__sizeof__()
                           + e.envelope.__sizeof__() - len(e.envelope))
        per_event = grown / len(events) + event_cost / 100
        self.assertLessEqual(per_event, EVENT_OVERHEAD)


class LatestTests(SynchronousTestCase):
    def setUp(self):
        self.h = History(max_events=10, max_age=0, max_bytes=10**9, max_channels=3,
                         clock=Clock())

    def test_latest_per_channel(self):
        """The snapshot holds the newest event of each channel, exact and wildcard."""
        for o, (token, etype) in enumerate([("A", "price"), ("A", "price"), ("B", "price"),
                                            ("A", "trade")]):
            self.h.add(ev(token, o, etype=etype, epoch="e"))
        got, more = self.h.latest([("A", "price")], 10)
        self.assertEqual(([e.offset for e in got], more), ([1], False))
        got, more = self.h.latest([("*", "price")], 10)
        self.assertEqual(sorted(e.offset for e in got), [1, 2])
        got, more = self.h.latest(ALL, 2)
        self.assertEqual((len(got), more), (2, True))

    def test_channel_bound(self):
        """Past max_channels the least recently updated channel is forgotten."""
        for o, token in enumerate(["A", "B", "C", "A", "D"]):
            self.h.add(ev(token, o, epoch="e"))
        self.assertEqual(self.h.channels, 3)
        self.assertEqual(self.h.latest([("B", "trade")], 10)[0], [])
        self.assertEqual([e.offset for e in self.h.latest([("A", "trade")], 10)[0]], [3])

    def test_cache_accounting_across_updates(self):
        """
        Through 5,000 events of random sizes on 8 channels (a bound of 3),
        the snapshot cache's bytes are those of the events it holds, its
        order is least recently updated first, and a channel updated in
        place stays in its token's and type's buckets (wildcard snapshots
        find it), once each.
        """
        rng = random.Random(3)
        h = History(max_events=10, max_age=0, max_bytes=10**9, max_channels=3, clock=Clock())
        order: list[str] = []   # channels, least recently updated first
        for o in range(5_000):
            token, etype = f"T{rng.randrange(4)}", rng.choice(("trade", "price"))
            e = ev(token, o, etype=etype, pad=rng.randrange(200))
            h.add(e)
            if e.channel in order:
                order.remove(e.channel)
            order.append(e.channel)
            del order[:-3]
            held = h.latest(ALL, 10)[0]
            self.assertEqual(sorted(x.channel for x in held), sorted(order))
            self.assertEqual(h.snapshot_bytes,
                             sum(len(x.envelope) + EVENT_OVERHEAD for x in held))
            self.assertEqual(len(h.latest([(token, "*")], 10)[0]),
                             sum(c.split(".")[2] == token for c in order))
            self.assertEqual(len(h.latest([("*", etype)], 10)[0]),
                             sum(c.endswith("." + etype) for c in order))
        self.assertEqual([x.channel for x in h._latest.values()], order)


class ReplayWorkTests(SynchronousTestCase):
    """The work of a recovery follows what it asks for, not what is retained (issue 23, H1/H2)."""

    def setUp(self):
        self.h = History(max_events=10**6, max_age=0, max_bytes=10**10, max_channels=10,
                         clock=Clock())
        for o in range(30_000):
            for p in (0, 1):
                self.h.add(ev(f"T{o % 50}", o, partition=p, epoch="e1", pad=1))
        self.deep = {("t", 0): ("e1", 9_000), ("t", 1): ("e1", 9_000)}

    def test_nothing_matching_visits_nothing(self):
        """
        With 30,000 events retained on each of two partitions, a recovery
        of 100 exact channels, 100 token wildcards or 100 type wildcards
        that match nothing, from 30% past the oldest retained offset (the
        scan looked at 41,998 events for each), is answered (nothing to
        replay) having looked at no event.
        """
        for nothing in ([(f"NONE{i}", "trade") for i in range(100)],
                        [(f"NONE{i}", "*") for i in range(100)],
                        [("*", f"none{i}") for i in range(100)]):
            self.assertEqual(self.h.replay(self.deep, nothing, 20_000), ([], None))
        self.assertEqual(self.h.replay_visits, 0)

    def test_visits_what_matches(self):
        """
        A recovery of two channels from the same positions looks at their
        runs (one per partition each) and the events it replays, no more.
        """
        got, reason = self.h.replay(self.deep, [("T3", "trade"), ("T7", "*")], 20_000)
        self.assertIsNone(reason)
        self.assertEqual(len(got), 2 * 2 * 420)
        self.assertEqual(self.h.replay_visits, 2 * 2 + len(got))
        self.assertEqual([e.offset for e in got[:3]], [9003, 9007, 9053])

    def test_too_large_past_max_scan(self):
        """
        A recovery that would look at more than max_scan events (everything
        since the deep positions: 41,998) is answered too_large having
        looked at none; without the bound it looks at all of them.
        """
        self.assertEqual(self.h.replay(self.deep, ALL, 20_000), (None, "too_large"))
        self.assertEqual(self.h.replay(self.deep, [("*", "trade")], 20_000),
                         (None, "too_large"))
        self.assertEqual(self.h.replay_visits, 0)
        got, _ = self.h.replay(self.deep, ALL)
        self.assertEqual((len(got), self.h.replay_visits), (41_998, 41_998))


class ReadTests(SynchronousTestCase):
    """One slice of a partition for a slow connection's catch-up (History.read)."""

    def test_slices_are_bounded_and_continue_where_they_stopped(self):
        """
        A slice looks at no more than max_scan events and stops before its
        matched envelopes pass max_bytes; the next starts after the last
        event looked at; together they give every matching event once.
        """
        h = History(max_events=1000, max_age=0, max_bytes=10**9, max_channels=10,
                    clock=Clock())
        for o in range(100, 200):
            h.add(ev("A" if o % 2 else "B", o, pad=10))
        got, offset = [], 99
        while offset != h.high("t", 0):
            events, last, looked, reason = h.read("t", 0, "e", offset, [("A", "*")], 7, 100)
            self.assertIsNone(reason)
            self.assertLessEqual(looked, 7)
            self.assertTrue(events)
            self.assertLessEqual(sum(len(e.envelope) for e in events),
                                 max(100, len(events[0].envelope)))
            got += events
            offset = last
        self.assertEqual([e.offset for e in got], list(range(101, 200, 2)))

    def test_reasons(self):
        """A position history cannot serve says why, as a recovery would."""
        h = History(max_events=5, max_age=0, max_bytes=10**9, max_channels=10, clock=Clock())
        for o in range(10, 20):
            h.add(ev("A", o))
        self.assertEqual(h.read("t", 0, "e", 3, ALL, 10, 100)[3], TOO_OLD)
        self.assertEqual(h.read("t", 0, "x", 17, ALL, 10, 100)[3], OTHER_EPOCH)
        self.assertEqual(h.read("t", 0, "e", 99, ALL, 10, 100)[3], AHEAD)
        self.assertEqual(h.read("t", 9, "e", 17, ALL, 10, 100)[3], UNKNOWN)


class SnapshotWorkTests(SynchronousTestCase):
    """The work of a snapshot follows its patterns, not the cache (issue 23, H3)."""

    def test_visits_bounded_whatever_is_cached(self):
        """
        With 20,000 channels cached (two types, 10,000 tokens, forgotten
        channels included), 100 patterns matching nothing visit at most one
        entry each (exact) or none (wildcards of unknown tokens or types);
        wildcards that match much stop past the limit; every call stays
        within len(patterns) * (2 * limit + 1) visits, and answers what a
        full scan would.
        """
        h = History(max_events=10**6, max_age=0, max_bytes=10**9, max_channels=20_000,
                    clock=Clock())
        for n in range(21_000):   # 1,000 channels forgotten (the cache's bound)
            h.add(ev(f"T{n % 10_500}", n, etype=("trade", "price")[n // 10_500]))
        self.assertEqual(h.channels, 20_000)
        limit = 50
        cases = {
            "exact, nothing": ([(f"NONE{i}", "trade") for i in range(100)], 0, False),
            "token wildcards, nothing": ([(f"NONE{i}", "*") for i in range(100)], 0, False),
            "type wildcards, nothing": ([("*", f"none{i}") for i in range(100)], 0, False),
            "forgotten channel": ([("T0", "trade")], 0, False),
            "a token": ([("T1600", "*")], 2, False),
            "a type": ([("*", "price")], limit, True),
            "everything": ([("*", "*"), ("T5", "*")], limit, True),
        }
        for what, (patterns, found, more) in cases.items():
            before = h.snapshot_visits
            got, over = h.latest(patterns, limit)
            visits = h.snapshot_visits - before
            self.assertEqual((len(got), over), (found, more), what)
            self.assertLessEqual(visits, len(patterns) * (2 * limit + 1), what)
            if not found:
                self.assertLessEqual(visits, sum(1 for t, e in patterns if "*" not in (t, e)),
                                     what)
        got, _ = h.latest([("T1600", "*"), ("T1601", "trade")], limit)
        self.assertEqual(sorted(e.channel for e in got),
                         ["odin.token.T1600.price", "odin.token.T1600.trade",
                          "odin.token.T1601.trade"])

class BackfillTests(SynchronousTestCase):
    """L{History.backfill}: what a starting shard read back from Kafka, joined to live delivery."""

    def setUp(self):
        self.clock = Clock()
        self.h = History(max_events=100, max_age=0, max_bytes=10**9, max_channels=100,
                         clock=self.clock)

    def live(self, *offsets, token="A", epoch="e1"):
        for o in offsets:
            self.h.add(ev(token, o, epoch=epoch, ts=1_000_000 + o))

    def back(self, offsets, token="A", epoch="e1", through=None, partition=0):
        events = [ev(token, o, epoch=epoch, ts=1_000_000 + o, partition=partition)
                  for o in offsets]
        return self.h.backfill(events, {("t", partition): through} if through is not None
                               else None)

    def offsets(self, since=-1, epoch="e1"):
        got, reason = self.h.replay({("t", 0): (epoch, since)}, ALL)
        return reason or [e.offset for e in got]

    def test_no_log_the_backfill_becomes_the_log(self):
        """Without a log the backfill is the log; its floor is its first offset - 1."""
        self.assertEqual(self.back(range(10, 15)), {("t", 0)})
        self.assertEqual(self.offsets(9), [10, 11, 12, 13, 14])
        self.assertEqual(self.offsets(8), TOO_OLD)
        self.assertEqual(self.h.bytes, sum(log.bytes for _, _, log in self.h.partitions()))

    def test_live_after_the_backfill_joins_only_without_a_gap(self):
        """The next live event continues the backfill only at through + 1 (or below)."""
        self.back(range(10, 15), through=16)     # 15, 16: records that were not events
        self.live(17)
        self.assertEqual(self.offsets(9), [10, 11, 12, 13, 14, 17])
        self.live(18, 19)                        # live delivery goes on as usual
        self.assertEqual(self.offsets(16), [17, 18, 19])

    def test_live_after_a_gap_starts_afresh(self):
        """A live event past through + 1: the warm-up and live delivery did not meet."""
        self.back(range(10, 15))
        self.live(20)
        self.assertEqual(self.offsets(14), NOT_LOADED)   # not evicted: never loaded
        self.assertEqual(self.offsets(19), [20])

    def test_contiguous_backfill_goes_in_front_of_live(self):
        """Live came first (floor 19); a backfill reaching it lowers the floor, in order."""
        self.live(20, 21, 22)
        self.assertEqual(self.back(range(10, 20)), {("t", 0)})
        self.assertEqual(self.offsets(9), list(range(10, 23)))
        self.live(23)
        self.assertEqual(self.offsets(21), [22, 23])

    def test_overlapping_backfill_adds_each_event_once(self):
        """A backfill overlapping live events and passing them: each offset once, in order."""
        self.live(15, 16)
        self.back(range(10, 20))
        self.assertEqual(self.offsets(9), list(range(10, 20)))
        self.live(20)                            # the caller de-duplicates up to 19
        self.assertEqual(self.offsets(18), [19, 20])

    def test_backfill_reaching_the_floor_through_non_events(self):
        """The last event is below the floor but the reader saw every record up to it."""
        self.live(20, 21)
        self.assertEqual(self.back([12, 14], through=19), {("t", 0)})
        self.assertEqual(self.offsets(11), [12, 14, 20, 21])

    def test_gap_before_live_keeps_live(self):
        """A backfill ending before the live floor: live kept as is, no continuity claimed."""
        self.live(20, 21)
        self.assertEqual(self.back(range(10, 15)), set())
        self.assertEqual(self.offsets(19), [20, 21])
        self.assertEqual(self.offsets(14), NOT_LOADED)

    def test_gap_after_live_keeps_live(self):
        """A backfill starting past the live end with a gap between: live kept as is."""
        self.live(5, 6)
        self.assertEqual(self.back(range(10, 15)), set())
        self.assertEqual(self.offsets(4), [5, 6])
        self.assertEqual(self.offsets(12), AHEAD)

    def test_other_epoch_is_ignored(self):
        """A backfill of another incarnation of the topic changes nothing, cache included."""
        self.live(20, token="L")
        self.assertEqual(self.back(range(10, 20), token="B", epoch="e0"), set())
        self.assertEqual(self.offsets(19), [20])
        self.assertEqual(self.h.latest([("B", "*")], 10)[0], [])

    def test_bounds_apply_after_backfill(self):
        """Count, age and budget bounds hold once the backfill is in."""
        h = self.h
        h.configure(max_events=5, max_age=0, max_bytes=10**9, max_channels=100)
        self.live(20, 21)
        self.back(range(10, 20))
        self.assertEqual(self.offsets(16), [17, 18, 19, 20, 21])
        self.assertEqual(self.offsets(15), TOO_OLD)
        h.configure(max_events=100, max_age=10, max_bytes=10**9, max_channels=100)
        now_ms = int(self.clock.now * 1000)
        h.backfill([ev("Z", o, partition=1, ts=now_ms - (40 - o) * 1000, epoch="e1")
                    for o in range(20, 40)])
        got, _ = h.replay({("t", 1): ("e1", 29)}, ALL)
        self.assertEqual([e.offset for e in got], list(range(30, 40)))
        size = len(ev("A", 0).envelope) + EVENT_OVERHEAD
        h.configure(max_events=100, max_age=0, max_bytes=size * 3, max_channels=100)
        self.assertLessEqual(h.bytes, h.max_bytes)
        self.assertEqual(h.bytes, sum(log.bytes for _, _, log in h.partitions()))

    def test_latest_never_replaced_by_an_older_backfilled_event(self):
        """The snapshot cache takes backfilled events only where it holds nothing newer."""
        self.live(20, token="A")
        self.back([10, 11, 12, 13], token="B", through=19)
        self.back([18, 19], token="A")            # older than the live A@20
        latest = {e.channel: e.offset for e in self.h.latest(ALL, 10)[0]}
        self.assertEqual(latest, {"odin.token.A.trade": 20, "odin.token.B.trade": 13})
        # Another partition's event counts as newer only by its timestamp.
        self.h.backfill([ev("A", 5, partition=3, ts=1_000_000 + 19, epoch="e1")])
        self.assertEqual(self.h.latest([("A", "*")], 10)[0][0].offset, 20)
        self.h.backfill([ev("B", 5, partition=3, ts=1_000_000 + 99, epoch="e1")])
        self.assertEqual(self.h.latest([("B", "*")], 10)[0][0].partition, 3)

    def test_latest_full_cache_keeps_newer_channels(self):
        """A full snapshot cache forgets a channel for a backfilled one only if that one is newer."""
        h = History(max_events=10, max_age=0, max_bytes=10**9, max_channels=2, clock=Clock())
        h.add(ev("A", 50, ts=500, epoch="e"))
        h.add(ev("B", 51, ts=510, epoch="e"))
        h.backfill([ev("C", 10, partition=1, ts=100, epoch="e")])
        self.assertEqual(sorted(e.token for e in h.latest(ALL, 10)[0]), ["A", "B"])
        h.backfill([ev("D", 10, partition=2, ts=505, epoch="e")])
        self.assertEqual(sorted(e.token for e in h.latest(ALL, 10)[0]), ["B", "D"])
