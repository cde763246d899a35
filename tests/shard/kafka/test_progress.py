"""
Tests for L{odin_ws.shard.kafka.progress}: partitions a shard holds but
does not read, and what the shard's Kafka ingest does about them.
"""

from __future__ import annotations

import json

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from odin_ws.common.events import Partition
from odin_ws.shard.kafka.ingest import KafkaIngest
from odin_ws.shard.kafka.progress import PartitionProgress, position_of
from tests.helpers import sample
from tests.helpers.cases import make_settings

P0, P1 = Partition("t", 0), Partition("t", 1)


class PartitionProgressTests(SynchronousTestCase):
    """A held partition is stalled when it is behind and its position does not move."""

    def test_behindAndNotMovingForTheGrace(self):
        """
        Records to read (high watermark 10, position 5) and the position
        unchanged: stalled once the grace has passed since it was first
        seen so, with how long; not before.
        """
        progress = PartitionProgress()
        progress.observe(P0, 5, 10, now=100.0)
        progress.observe(P0, 5, 12, now=104.0)
        self.assertEqual(progress.stalled(now=104.0, grace=5.0), {})
        progress.observe(P0, 5, 14, now=106.0)
        self.assertEqual(progress.stalled(now=106.0, grace=5.0), {P0: 6.0})

    def test_movingIsProgress(self):
        """A position that moves starts the watch again, however far behind it is."""
        progress = PartitionProgress()
        progress.observe(P0, 5, 100, now=100.0)
        progress.observe(P0, 6, 100, now=104.0)
        progress.observe(P0, 6, 100, now=108.0)
        self.assertEqual(progress.stalled(now=108.0, grace=5.0), {})
        self.assertEqual(progress.stalled(now=109.0, grace=5.0), {P0: 5.0})

    def test_readToTheEndIsNotStalled(self):
        """A partition at its high watermark has nothing to read: never stalled."""
        progress = PartitionProgress()
        progress.observe(P0, 5, 10, now=100.0)
        progress.observe(P0, 10, 10, now=101.0)
        progress.observe(P0, 10, 10, now=120.0)
        self.assertEqual(progress.stalled(now=120.0, grace=5.0), {})

    def test_neverFetchedCountsAsBehind(self):
        """
        A partition held for the grace whose position or high watermark the
        consumer never learnt (never fetched since it got it) is stalled.
        """
        progress = PartitionProgress()
        progress.observe(P0, -1, -1, now=100.0)
        progress.observe(P1, -1, 40, now=100.0)
        progress.observe(P0, -1, -1, now=110.0)
        progress.observe(P1, -1, 40, now=110.0)
        self.assertEqual(progress.stalled(now=110.0, grace=5.0), {P0: 10.0, P1: 10.0})

    def test_forgetting(self):
        """
        Partitions no longer held are forgotten; L{PartitionProgress.clear}
        (back-pressure, no broker) forgets all; a grace of 0 turns the check off.
        """
        progress = PartitionProgress()
        progress.observe(P0, 1, 10, now=100.0)
        progress.observe(P1, 1, 10, now=100.0)
        self.assertEqual(progress.stalled(now=200.0, grace=0), {})
        progress.keep_only({P1})
        self.assertEqual(progress.stalled(now=200.0, grace=5.0), {P1: 100.0})
        progress.clear()
        self.assertEqual(progress.stalled(now=200.0, grace=5.0), {})

    def test_positionFromStatistics(self):
        """
        The position is the next offset to fetch or past the last record
        handed over, whichever is further (librdkafka's invalid -1001: -1).
        """
        self.assertEqual(position_of({"next_offset": 7, "app_offset": 5}), 7)
        self.assertEqual(position_of({"next_offset": -1001, "app_offset": 5}), 5)
        self.assertEqual(position_of({"next_offset": -1001, "app_offset": -1001}), -1)
        self.assertEqual(position_of({}), -1)


class ThreadlessReactor(Clock):
    """A Clock whose callFromThread runs the call at once (the test is the consumer thread)."""

    def callFromThread(self, f, *args, **kw):
        f(*args, **kw)


def statistics(partitions: dict[int, tuple[int, int]], leaderless: frozenset[int] = frozenset()) -> str:
    """
    librdkafka statistics: one broker up, topic t's partitions at (position,
    high), led by broker 1 but those in C{leaderless} (leader -1).
    """
    broker = {"name": "127.0.0.1:9092/1", "nodename": "127.0.0.1:9092", "state": "UP",
              "source": "learned", "rxidle": 10_000, "waitresp_cnt": 1}
    return json.dumps({"brokers": {broker["name"]: broker}, "topics": {"t": {"partitions": {
        str(p): {"next_offset": position, "app_offset": position, "hi_offset": high,
                 "leader": -1 if p in leaderless else 1}
        for p, (position, high) in partitions.items()}}}})


class StalledIngestTests(SynchronousTestCase):
    """The shard's Kafka ingest shows, counts and acts on a stalled partition."""

    def setUp(self):
        self.reactor = ThreadlessReactor()
        settings = make_settings(kafka__brokers="b:1", kafka__topics={"t": "trade"},
                                 kafka__progress_grace=5.0)
        self.ingest = KafkaIngest(self.reactor, settings, 0, None, None)
        self.ingest._thread = object()  # a consumer thread runs (rejoin is possible)
        self.ingest.publish_assignment(frozenset({P0, P1}))

    def feed(self, seconds: int, partitions: dict[int, tuple[int, int]],
             leaderless: frozenset[int] = frozenset()) -> None:
        """One statistics report a second for C{seconds} seconds."""
        for _ in range(seconds):
            self.ingest._on_stats(statistics(partitions, leaderless))
            self.reactor.advance(1.0)
        self.ingest._on_stats(statistics(partitions, leaderless))

    def test_leaderlessPartitionAtItsLastHighWatermarkIsStalled(self):
        """
        t[0] has no leader in the consumer's metadata, at its stale high
        watermark (0 of 0, as after a broker replaced with its data): it is
        fetched from nowhere, so after the grace it is stalled and the
        consumer rejoins; t[1], read to its end with a leader, is not.
        """
        self.feed(6, {0: (0, 0), 1: (10, 10)}, leaderless=frozenset({0}))
        self.assertEqual(list(self.ingest.status()["stalled"]), ["t[0]"])
        self.assertTrue(self.ingest._rejoin.is_set())
        # Its leader known again, read to its end: not stalled.
        self.feed(1, {0: (0, 0), 1: (10, 10)})
        self.assertEqual(self.ingest.status()["stalled"], {})

    def test_stalledPartitionIsShownCountedAndRejoins(self):
        """
        t[0] has records to read and does not move while t[1] is read: after
        the grace the status names t[0] (not t[1]), the gauge says 1, and the
        consumer thread is asked to rejoin its group, with the reason; not
        before the grace.
        """
        for second in range(4):
            self.feed(1, {0: (5, 10 + second), 1: (second, 10)})
        self.assertEqual(self.ingest.status()["stalled"], {})
        self.assertFalse(self.ingest._rejoin.is_set())
        self.feed(2, {0: (5, 20), 1: (9, 10)})
        self.assertEqual(list(self.ingest.status()["stalled"]), ["t[0]"])
        self.assertEqual(sample("odinws_kafka_partitions_stalled"), 1)
        self.assertTrue(self.ingest._rejoin.is_set())
        self.assertIn("t[0]", self.ingest.rejoin_reason)

    def test_movingAgainClearsIt(self):
        """Once the stalled partition is read again, the status and the gauge clear."""
        self.feed(6, {0: (5, 10), 1: (10, 10)})
        self.assertEqual(list(self.ingest.status()["stalled"]), ["t[0]"])
        self.feed(1, {0: (6, 10), 1: (10, 10)})
        self.assertEqual(self.ingest.status()["stalled"], {})
        self.assertEqual(sample("odinws_kafka_partitions_stalled"), 0)

    def test_rejoinThenNewConsumer(self):
        """
        A partition still stalled one grace after the rejoin makes the
        consumer thread replace the consumer (the fatal-error path), with
        the reason in the status; not sooner than a grace after the rejoin,
        which took the partitions away and gave them back. A stall cured
        by a rejoin starts over with a rejoin.
        """
        self.feed(5, {0: (5, 10), 1: (10, 10)})
        self.assertTrue(self.ingest._rejoin.is_set())
        self.ingest._rejoin.clear()  # the consumer thread took it
        # The rejoin takes the partitions away and gives them back.
        self.ingest.publish_assignment(frozenset())
        self.feed(1, {})
        self.ingest.publish_assignment(frozenset({P0, P1}))
        self.feed(3, {0: (5, 10), 1: (10, 10)})
        self.assertFalse(self.ingest._rejoin.is_set() or self.ingest._fatal.is_set())
        self.feed(5, {0: (5, 10), 1: (10, 10)})
        self.assertFalse(self.ingest._rejoin.is_set())
        self.assertTrue(self.ingest._fatal.is_set())
        status = self.ingest.status()
        self.assertEqual((status["assigned"], status["stalled"]), ([], {}))
        self.assertIn("t[0]", status["last_error"])

    def test_curedStallStartsOverWithARejoin(self):
        """A stall that a rejoin cured, and a new one later: a rejoin again, not a new consumer."""
        self.feed(5, {0: (5, 10), 1: (10, 10)})
        self.ingest._rejoin.clear()
        self.feed(15, {0: (10, 10), 1: (10, 10)})
        self.feed(5, {0: (10, 20), 1: (10, 10)})
        self.assertTrue(self.ingest._rejoin.is_set())
        self.assertFalse(self.ingest._fatal.is_set())

    def test_pausedForBackPressureIsNotStalled(self):
        """
        While the consumer loop pauses its partitions (the reactor is
        behind), their not moving is on purpose: not stalled.
        """
        self.ingest.pausing(True)
        self.feed(10, {0: (5, 10), 1: (5, 10)})
        self.assertEqual(self.ingest.status()["stalled"], {})
        self.assertFalse(self.ingest._rejoin.is_set())
        self.ingest.pausing(False)
        self.feed(5, {0: (5, 10), 1: (5, 10)})
        self.assertEqual(sorted(self.ingest.status()["stalled"]), ["t[0]", "t[1]"])
