"""Tests for L{odin_ws.shard.history.partitionlog}: the per-channel index of a partition."""

from __future__ import annotations

import random
import tracemalloc

from twisted.trial.unittest import SynchronousTestCase

from odin_ws.common.events import Event
from odin_ws.shard.history.partitionlog import CHANNEL_OVERHEAD, PartitionLog, matches
from odin_ws.shard.history.store import History

TYPES = ("trade", "price", "liquidity")


def ev(token: str, offset: int, etype: str = "trade", partition: int = 0,
       ts: int = 1_000_000) -> Event:
    return Event.build(token, etype, b'"x"', ts, "t", partition, offset, "e")


class Clock:
    def __call__(self) -> float:
        return 1000.0


def index_of(log: PartitionLog) -> dict[tuple[str, str], list[int]]:
    """What the index holds: (type, token) -> offsets of its live events."""
    return {(etype, token): [e.offset for e in run[run.start:]]
            for etype, tokens in log.runs.items() for token, run in tokens.items()}


def rebuilt(log: PartitionLog) -> dict[tuple[str, str], list[int]]:
    """What the index must hold, from the partition's retained events."""
    out: dict[tuple[str, str], list[int]] = {}
    for e in log.events[log.start:]:
        out.setdefault((e.event_type, e.token), []).append(e.offset)
    return out


def high_of(log: PartitionLog) -> int:
    """What C{high} must be: the newest retained event's offset, else the floor."""
    return log.events[-1].offset if len(log) else log.floor


def random_patterns(rng: random.Random) -> list[tuple[str, str]]:
    out = []
    for _ in range(rng.randint(1, 6)):
        token = rng.choice(["*", "NONE", *(f"T{i}" for i in range(12))])
        out.append((token, rng.choice(["*", "none", *TYPES])))
    return out


class IndexTests(SynchronousTestCase):
    """The index holds exactly the retained events, and recoveries through it equal the scan."""

    def test_kept_right_across_eviction_and_backfill(self):
        """
        Through 20,000 random events on three partitions, evicted by count
        and by byte budget, after a backfill, with a log restarted (offsets
        went back) and offsets skipped, every partition's index holds
        exactly its retained events per channel, in offset order, and the
        accounted bytes equal the logs' (runs included).
        """
        rng = random.Random(23)
        clock = Clock()
        h = History(max_events=700, max_age=0, max_bytes=900 * 1024, max_channels=100,
                    clock=clock)
        offsets = {0: 5_000, 1: 5_000, 2: 5_000}
        h.backfill([ev(f"T{rng.randrange(40)}", o, TYPES[o % 3], partition=1)
                    for o in range(4_000, 5_001)])
        for n in range(20_000):
            p = rng.randrange(3)
            offsets[p] += 1 + (rng.random() < 0.1)
            h.add(ev(f"T{rng.randrange(40)}", offsets[p], rng.choice(TYPES), partition=p))
            if n == 10_000:
                offsets[2] = 0   # offsets went back: the log restarts
            if n % 1_999 == 0:
                for _, _, log in h.partitions():
                    self.assertEqual(index_of(log), rebuilt(log))
                    self.assertEqual(log.high, high_of(log))
        self.assertGreater(h.evicted["count"] + h.evicted["budget"], 10_000)
        for _, _, log in h.partitions():
            self.assertEqual(index_of(log), rebuilt(log))
            self.assertEqual(log.high, high_of(log))
        self.assertEqual(h.bytes, sum(log.bytes for _, _, log in h.partitions()))

    def test_high_through_eviction_and_prepend(self):
        """
        C{high} is the newest retained offset, or the floor when nothing is
        retained: after appends, after evicting everything (the floor is
        then the last offset evicted), and after older events are put in
        front of an empty log and of a non-empty one.
        """
        log = PartitionLog("e", 9)
        self.assertEqual(log.high, 9)
        for o in (10, 12, 15):
            log.append(ev("A", o))
        self.assertEqual(log.high, 15)
        for _ in range(3):
            log.pop_oldest()
        self.assertEqual((len(log), log.high, log.floor), (0, 15, 15))
        log.prepend([ev("B", 3), ev("A", 4)])
        self.assertEqual((log.high, log.floor), (4, 2))
        log.append(ev("A", 20))
        log.prepend([ev("C", 1)])
        self.assertEqual((log.high, log.floor), (20, 0))
        self.assertEqual([e.offset for e in log.after(0)], [1, 3, 4, 20])
        self.assertEqual(log.count_after(3), 2)

    def test_prepend_joins_runs(self):
        """Older events put in front join their channels' runs in front, in offset order."""
        log = PartitionLog("e", 9)
        for o in range(10, 20):
            log.append(ev(f"T{o % 3}", o))
        for _ in range(5):
            log.pop_oldest()
        log.prepend([ev(f"T{o % 4}", o) for o in range(15)])
        self.assertEqual(index_of(log), rebuilt(log))
        self.assertEqual(index_of(log)[("trade", "T1")], [1, 5, 9, 13, 16, 19])

    def test_select_equals_the_scan(self):
        """
        For 2,000 random pattern lists and positions over a partition of
        random channels (part of it evicted), the events selected through
        the index are those the scan finds, in the same order, and never
        cost more visits than the scan.
        """
        rng = random.Random(5)
        log = PartitionLog("e", -1)
        for o in range(6_000):
            log.append(ev(f"T{rng.randrange(12)}", o, rng.choice(TYPES)))
        for _ in range(1_500):
            log.pop_oldest()
        for _ in range(2_000):
            patterns = random_patterns(rng)
            offset = rng.randrange(log.floor, log.high + 1)
            got, visits = log.select(offset, patterns)
            scan = [e for e in log.after(offset) if matches(patterns, e)]
            self.assertEqual(got, scan, (patterns, offset))
            self.assertLessEqual(visits, log.count_after(offset))

    def test_catch_up_reads_equal_the_scan(self):
        """
        A catch-up read in slices (L{PartitionLog.read}, as a slow
        connection's catch-up loops: from the last offset each slice
        returns until it reaches the newest) sends, for 1,000 random pattern
        lists, positions and slice bounds, exactly the events the scan
        finds, in order; each slice looks at no more than its bound, and a
        connection of a few channels looks at far fewer events than follow
        its position.
        """
        rng = random.Random(9)
        log = PartitionLog("e", -1)
        for o in range(6_000):
            log.append(ev(f"T{rng.randrange(200)}", o, rng.choice(TYPES)))
        for _ in range(1_000):
            log.pop_oldest()
        for _ in range(1_000):
            patterns = random_patterns(rng)
            offset = rng.randrange(log.floor, log.high + 1)
            max_scan, max_bytes = rng.choice([(50, 10**9), (20_000, 300), (20_000, 10**9)])
            want = [e for e in log.after(offset) if matches(patterns, e)]
            got: list[Event] = []
            position = offset
            while position != log.high:
                events, position, n = log.read(position, patterns, max_scan, max_bytes)
                self.assertLessEqual(n, max_scan)
                got.extend(events)
            self.assertEqual(got, want, (patterns, offset, max_scan, max_bytes))
        events, last, looked = log.read(log.floor, [("T7", "trade")], 20_000, 10**9)
        self.assertEqual((events, last), ([e for e in log.after(log.floor)
                                           if e.channel == "odin.token.T7.trade"], log.high))
        self.assertEqual(looked, 1 + len(events))

    def test_channel_overhead_covers_real_memory(self):
        """CHANNEL_OVERHEAD is at least what one more channel costs a partition's index."""

        def grown(events: list[Event]) -> float:
            log = PartitionLog("e", -1)
            tracemalloc.start()
            before = tracemalloc.take_snapshot()
            for e in events:
                log.append(e)
            after = tracemalloc.take_snapshot()
            tracemalloc.stop()
            return sum(s.size_diff for s in after.compare_to(before, "filename"))

        n = 20_000
        one = grown([ev("T", o) for o in range(n)])
        many = grown([ev(f"T{o}", o, TYPES[o % 3]) for o in range(n)])
        self.assertLessEqual((many - one) / n, CHANNEL_OVERHEAD)
