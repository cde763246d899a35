"""
Unit tests of L{odin_ws.shard.kafka.consumerloop}'s choice of where a
partition without a usable offset starts (librdkafka's auto.offset.reset is
"error"): after the topic's identity is known, never before.
"""

from __future__ import annotations

import queue
import threading
import time

from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, KafkaError, KafkaException, TopicPartition
from twisted.trial.unittest import SynchronousTestCase

from odin_ws.common.events import Partition
from odin_ws.shard.kafka.consumerloop import ConsumerLoop
from odin_ws.shard.kafka.records import RecordMapper
from tests.helpers import sample
from tests.helpers.fakes import FakeKafkaMessage
from tests.helpers.kafkafakes import (
    FakeConsumer,
    FakeIncarnations,
    FakeIngest,
    RebalanceConsumer,
    make_settings,
)


class PlacingConsumer(RebalanceConsumer):
    """Records (re)assignments with their offsets, sorted; positions from a dict."""

    def __init__(self):
        super().__init__()
        self.positions: dict[tuple[str, int], int] = {}
        self.stored: list[tuple[str, int, int]] = []

    # Sorted: the order of a (re)assignment's partitions does not matter,
    # and the loop takes them from sets.
    def incremental_assign(self, partitions):
        self.calls.append(("incremental_assign",
                           sorted((tp.topic, tp.partition, tp.offset) for tp in partitions)))

    def incremental_unassign(self, partitions):
        self.calls.append(("incremental_unassign",
                           sorted((tp.topic, tp.partition) for tp in partitions)))

    def position(self, partitions):
        return [TopicPartition(tp.topic, tp.partition,
                               self.positions.get((tp.topic, tp.partition), -1001))
                for tp in partitions]

    def store_offsets(self, offsets):
        self.stored.extend((tp.topic, tp.partition, tp.offset) for tp in offsets)

    #: (topic, partition) -> the offset of its first record at or after the
    #: asked timestamp (-1 when none; the default), and its end now.
    since: dict[tuple[str, int], int] = {}
    ends: dict[tuple[str, int], int] = {}
    times_asked: list[int] = []

    def offsets_for_times(self, partitions, timeout=None):
        self.times_asked = [tp.offset for tp in partitions]
        return [TopicPartition(tp.topic, tp.partition, self.since.get((tp.topic, tp.partition), -1))
                for tp in partitions]

    def get_watermark_offsets(self, tp, timeout=None, cached=False):
        return 0, self.ends.get((tp.topic, tp.partition), OFFSET_END)


class FakeLayout:
    """
    Which partitions the group never read (L{TopicLayout.unread}, asked of
    the consumer it is given) and which appeared since the start, from sets.
    """

    def __init__(self, unread=(), fails: bool = False, appeared=()):
        self._unread = set(unread)
        self._appeared = set(appeared)
        self.fails = fails
        self.asked: list = []

    def unread(self, consumer, topic, partition):
        self.asked.append(consumer)
        if self.fails:
            raise TimeoutError("no answer")
        return (topic, partition) in self._unread

    def appeared(self, partition):
        return partition in self._appeared

    def new(self, partitions):
        return []


class FailingIncarnations(FakeIncarnations):
    """Identities that cannot be looked up until C{answer} is set."""

    answer = False

    def refresh(self, topics):
        if self.answer:
            return super().refresh(topics)
        self.failure = KafkaException(KafkaError(KafkaError._TIMED_OUT,
                                                 "Timed out waiting for controller"))
        return None


def reset_error(partition: int) -> FakeKafkaMessage:
    """librdkafka's "no usable offset" for t[partition], as consume() returns it."""
    err = KafkaError(KafkaError._AUTO_OFFSET_RESET, "fetch failed due to requested offset "
                     "not available on the broker: Broker: Offset out of range")
    return FakeKafkaMessage("t", partition, 5, error=err)


class OffsetsLostTests(SynchronousTestCase):

    def loop(self, start: str = "latest", layout=None, incarnations=None) -> ConsumerLoop:
        settings = make_settings("127.0.0.1:1", "t", "g", **{"kafka.start_offset": start})
        self.ingest = FakeIngest()
        self.ingest.log = lambda level, fmt, **kw: self.ingest.audited.append(fmt.format(**kw))  # type: ignore[method-assign]
        self.incarnations = incarnations or FakeIncarnations({"t": "e1"})
        self.consumer = PlacingConsumer()
        loop = ConsumerLoop(self.ingest, self.consumer, RecordMapper.from_settings(settings.kafka),
                            settings.kafka, threading.Event(), queue.SimpleQueue(), 4,
                            self.incarnations, cooperative=True,
                            layout=layout or FakeLayout())
        self.incarnations.answer = True
        loop.on_assign(self.consumer, [TopicPartition("t", 0), TopicPartition("t", 1)])
        self.consumer.calls.clear()
        return loop

    def test_recreatedTopicReadFromItsBeginning(self):
        """
        An offset out of range because the topic was recreated: its identity
        is looked up first, and every assigned partition of it is read again
        from the beginning of the new log, so its first records arrive once,
        under the new epoch.
        """
        loop = self.loop()
        self.incarnations.ids["t"] = "e2"
        loop.handle([reset_error(0)])
        self.assertEqual(self.consumer.calls, [
            ("incremental_unassign", [("t", 0), ("t", 1)]),
            ("incremental_assign", [("t", 0, OFFSET_BEGINNING), ("t", 1, OFFSET_BEGINNING)])])
        loop.handle([FakeKafkaMessage("t", 0, 0)])
        [events] = self.ingest.batches
        self.assertEqual([(e.offset, e.epoch) for e in events], [(0, "e2")])

    def test_sameIdentityStartsWhereStartOffsetSays(self):
        """
        No usable offset for a topic of unchanged identity (a new group,
        retention): the partition starts at its end with start_offset
        latest, at its beginning with earliest.
        """
        for start, where in (("latest", OFFSET_END), ("earliest", OFFSET_BEGINNING)):
            loop = self.loop(start)
            loop.handle([reset_error(1)])
            self.assertEqual(self.consumer.calls, [("incremental_unassign", [("t", 1)]),
                                                   ("incremental_assign", [("t", 1, where)])])

    def test_latestMeansSinceTheConsumerStarted(self):
        """
        start_offset latest, no usable offset: the partition starts at its
        first record since the consumer started (looked up by time), so
        records produced between the start and librdkafka resolving "the
        end" (up to ~1 s later, measured) are read, not skipped; with none
        yet, at its end as of now, a real offset.
        """
        before = int(time.time() * 1000)
        loop = self.loop()
        self.consumer.since = {("t", 1): 7}
        loop.handle([reset_error(1)])
        self.assertEqual(self.consumer.calls, [("incremental_unassign", [("t", 1)]),
                                               ("incremental_assign", [("t", 1, 7)])])
        self.assertEqual(self.consumer.times_asked, [loop.started_ms])
        self.assertGreaterEqual(loop.started_ms, before)
        loop = self.loop()
        self.consumer.ends = {("t", 1): 12}
        loop.handle([reset_error(1)])
        self.assertEqual(self.consumer.calls[-1], ("incremental_assign", [("t", 1, 12)]))

    def test_latestLookupFailingLeavesTheLogicalEnd(self):
        """A failed lookup by time: the partition starts at the logical end, the error counted."""
        errors: list[str] = []
        loop = self.loop()
        self.ingest.note_error = lambda kind, text, level="warn": errors.append(kind)

        def fails(partitions, timeout=None):
            raise KafkaException(KafkaError(KafkaError._TIMED_OUT, "no answer"))
        self.consumer.offsets_for_times = fails
        loop.handle([reset_error(1)])
        self.assertEqual(self.consumer.calls[-1], ("incremental_assign", [("t", 1, OFFSET_END)]))
        self.assertEqual(errors, ["start_offset"])

    def test_incarnationFoundEarlierStillReadFromItsBeginning(self):
        """
        A broker replaced on the same address: the periodic identity lookup
        sees the new incarnation while the group re-forms, and only then do
        the partitions come with no usable offset (the new broker's group
        has none). They start at the beginning of the new log, not where
        start_offset latest says: records produced meanwhile are new.
        """
        loop = self.loop()
        self.incarnations.ids["t"] = "e2"
        loop.refresh_epochs()
        self.consumer.calls.clear()
        loop.handle([reset_error(1)])
        self.assertEqual(self.consumer.calls, [("incremental_unassign", [("t", 1)]),
                                               ("incremental_assign", [("t", 1, OFFSET_BEGINNING)])])

    def test_replacementGoesOnFromWhatTheShardLearnt(self):
        """
        A consumer replaced (after a stall or a fatal error) shares the
        shard's topic identities, so its own lookup finds nothing new: the
        topics found renewed are the tracker's, and the start time is the
        shard's, passed in. A renewed topic's partition without a usable
        offset still starts at the beginning of the new log; otherwise
        "latest" counts from the shard's first consumer. (With its own, a replacement after
        a broker was replaced started the new log at its first record since
        the replacement: 150 events lost, /health ok.)
        """
        first = self.loop()
        self.incarnations.ids["t"] = "e2"
        first.refresh_epochs()

        def replacement(incarnations: FakeIncarnations) -> ConsumerLoop:
            settings = make_settings("127.0.0.1:1", "t", "g", **{"kafka.start_offset": "latest"})
            loop = ConsumerLoop(self.ingest, self.consumer, first.mapper, settings.kafka,
                                threading.Event(), queue.SimpleQueue(), 4, incarnations,
                                cooperative=True, layout=FakeLayout(),
                                started_ms=first.started_ms - 60_000)
            loop.on_assign(self.consumer, [TopicPartition("t", 0), TopicPartition("t", 1)])
            self.consumer.calls.clear()
            loop.handle([reset_error(1)])
            return loop
        replacement(self.incarnations)
        self.assertEqual(self.consumer.calls[-1],
                         ("incremental_assign", [("t", 1, OFFSET_BEGINNING)]))
        self.consumer.since = {("t", 1): 7}
        replacement(FakeIncarnations({"t": "e2"}))   # a topic it knew as it is
        self.assertEqual(self.consumer.calls[-1], ("incremental_assign", [("t", 1, 7)]))
        self.assertEqual(self.consumer.times_asked[-1], first.started_ms - 60_000)

    def test_partitionNeverReadByTheGroupFromItsBeginning(self):
        """
        With start_offset latest, a partition the group never read while it
        read others of the topic (added while the node was down) starts at
        its beginning; if that cannot be looked up, where start_offset says
        (the error counted).
        """
        loop = self.loop(layout=FakeLayout(unread={("t", 1)}))
        loop.handle([reset_error(1)])
        self.assertEqual(self.consumer.calls[-1],
                         ("incremental_assign", [("t", 1, OFFSET_BEGINNING)]))
        errors: list[str] = []
        loop = self.loop(layout=FakeLayout(unread={("t", 1)}, fails=True))
        self.ingest.note_error = lambda kind, text, level="warn": errors.append(kind)
        loop.handle([reset_error(1)])
        self.assertEqual(self.consumer.calls[-1], ("incremental_assign", [("t", 1, OFFSET_END)]))
        self.assertEqual(errors, ["new_partitions"])

    def test_committedOffsetsAskedOfTheConsumer(self):
        """
        Whether the group read a partition is asked of the consumer itself
        (its own offset lookup), not of an admin client's coordinator
        request, which can abort the process in librdkafka 2.16.
        """
        layout = FakeLayout()
        loop = self.loop(layout=layout)
        loop.handle([reset_error(1)])
        self.assertEqual(layout.asked, [self.consumer])

    def test_partitionAppearedSinceStartFromItsBeginning(self):
        """
        A partition that appeared while the shard ran (added to the topic)
        and that the group has no offset for starts at its beginning with
        start_offset latest, without any lookup of the group's offsets.
        """
        layout = FakeLayout(appeared={("t", 1)})
        loop = self.loop(layout=layout)
        loop.handle([reset_error(1)])
        self.assertEqual(self.consumer.calls[-1],
                         ("incremental_assign", [("t", 1, OFFSET_BEGINNING)]))
        self.assertEqual(layout.asked, [])

    def test_identityUnknownWaits(self):
        """
        While the topics' identities cannot be looked up the partition is
        not restarted anywhere (nothing of a possibly new log is read), and
        the failure is counted and shown; the partition is placed at the
        next successful lookup.
        """
        incarnations = FailingIncarnations({"t": "e1"})
        loop = self.loop(incarnations=incarnations)
        incarnations.answer = False
        errors: list[tuple[str, str]] = []
        self.ingest.note_error = lambda kind, text, level="warn": errors.append((kind, text))
        loop.handle([reset_error(0)])
        self.assertEqual(self.consumer.calls, [])
        self.assertEqual(errors, [("topic_identity", "topic identity lookup failed: Timed out "
                                   "waiting for controller")])
        self.assertEqual(loop.unplaced, {Partition("t", 0)})
        incarnations.answer = True
        incarnations.ids["t"] = "e2"
        loop.epochs_due = 0
        loop.consumer.consume = lambda n, timeout: []
        loop.poll_once()
        self.assertEqual(self.consumer.calls[-1], ("incremental_assign", [
            ("t", 0, OFFSET_BEGINNING), ("t", 1, OFFSET_BEGINNING)]))

    def test_batchesOfTheOldLogNotStored(self):
        """
        Offsets that batches in flight read of a partition restarted on a
        new log are not stored: they belong to the old log.
        """
        loop = self.loop()
        loop.handle([FakeKafkaMessage("t", 0, 7), FakeKafkaMessage("t", 1, 3)])
        self.incarnations.ids["t"] = "e2"
        loop.handle([reset_error(0)])
        loop.done.put(0)
        loop.take_done(0)
        self.assertEqual(self.consumer.stored, [])

    def test_idlePartitionsStoreTheirStart(self):
        """
        At each identity check, assigned partitions with nothing stored and
        nothing in flight store their position, so the group remembers where
        this node started them (not taken for never-read partitions later).
        """
        loop = self.loop()
        self.consumer.positions = {("t", 0): 40}
        loop.handle([FakeKafkaMessage("t", 1, 3)])  # in flight: not stored
        loop.store_positions()
        self.assertEqual(self.consumer.stored, [("t", 0, 40)])
        loop.store_positions()
        self.assertEqual(self.consumer.stored, [("t", 0, 40)])


class SubscribingConsumer(PlacingConsumer):
    """Also records the subscription calls."""

    def unsubscribe(self):
        self.calls.append(("unsubscribe",))

    def subscribe(self, topics, **callbacks):
        self.calls.append(("subscribe", tuple(topics)))

    def consume(self, n, timeout):
        return []


class RejoinTests(SynchronousTestCase):

    def test_rejoinLeavesAndSubscribesAgain(self):
        """
        The parent's rejoin request (an event set from the reactor) makes the
        consumer thread leave the group and subscribe again at its next
        poll, once (counted, logged); without it the loop does not touch
        the subscription.
        """
        settings = make_settings("127.0.0.1:1", "t", "g")
        ingest = FakeIngest()
        logged: list[str] = []
        ingest.log = lambda level, fmt, **kw: logged.append(fmt)
        consumer = SubscribingConsumer()
        rejoin = threading.Event()
        loop = ConsumerLoop(ingest, consumer, RecordMapper.from_settings(settings.kafka),
                            settings.kafka, threading.Event(), queue.SimpleQueue(), 4,
                            FakeIncarnations({"t": "e1"}), cooperative=True, rejoin=rejoin)
        before = sample("odinws_kafka_group_rejoins_total") or 0
        loop.poll_once()
        self.assertNotIn(("unsubscribe",), consumer.calls)
        rejoin.set()
        loop.poll_once()
        loop.poll_once()
        subscriptions = [c for c in consumer.calls if c[0] in ("unsubscribe", "subscribe")]
        self.assertEqual(subscriptions, [("unsubscribe",), ("subscribe", ("t",))])
        self.assertFalse(rejoin.is_set())
        self.assertEqual(sample("odinws_kafka_group_rejoins_total"), before + 1)
        self.assertEqual(len([line for line in logged if "joining again" in line]), 1)


class ConsumerLoopTakeTests(SynchronousTestCase):
    """How the loop asks librdkafka for records (issue 15: no wait for a full batch)."""

    def loop(self, consumer: FakeConsumer, poll_batch: int = 500) -> ConsumerLoop:
        settings = make_settings("127.0.0.1:1", "t", "g", **{"kafka.poll_batch": poll_batch,
                                                             "kafka.poll_timeout": 0.25})
        return ConsumerLoop(FakeIngest(), consumer, RecordMapper.from_settings(settings.kafka),
                            settings.kafka, threading.Event(), queue.SimpleQueue(), 4,
                            FakeIncarnations({"t": "e1"}))

    def test_firstRecordThenWhatIsBuffered(self):
        """
        The loop waits (up to poll_timeout) for one record only, then takes
        whatever else is already fetched without waiting, up to poll_batch:
        a quiet stream's event is not held for poll_timeout, a burst is
        still one batch.
        """
        first = [FakeKafkaMessage("t", 0, 0)]
        rest = [FakeKafkaMessage("t", 0, 1), FakeKafkaMessage("t", 0, 2)]
        consumer = FakeConsumer([first, rest])
        self.assertEqual(self.loop(consumer).take(), first + rest)
        self.assertEqual(consumer.calls, [(1, 0.25), (499, 0)])

    def test_nothingThere(self):
        """When nothing came within poll_timeout there is no second call."""
        consumer = FakeConsumer([])
        self.assertEqual(self.loop(consumer).take(), [])
        self.assertEqual(consumer.calls, [(1, 0.25)])

    def test_fatalErrorStops(self):
        """
        A fatal error returned by consume() (librdkafka's consumer fenced by
        another with this shard's group.instance.id) goes to the owner as
        fatal, and nothing after it in the batch is handled.
        """
        fenced = KafkaError(KafkaError._FATAL, "Fatal consumer error: Broker: Static consumer "
                            "fenced by other consumer with same group.instance.id")
        ingest = FakeIngest()
        loop = self.loop(FakeConsumer([]))
        loop.ingest = ingest
        loop.handle([FakeKafkaMessage("t", 0, 0, error=fenced), FakeKafkaMessage("t", 0, 1)])
        self.assertEqual(len(ingest.fatals), 1)
        self.assertIn("fenced", ingest.fatals[0])
        self.assertEqual(ingest.batches, [])

    def test_batchOfOne(self):
        """With poll_batch 1 a record is taken alone."""
        consumer = FakeConsumer([[FakeKafkaMessage("t", 0, 0)]])
        self.assertEqual(len(self.loop(consumer, poll_batch=1).take()), 1)
        self.assertEqual(consumer.calls, [(1, 0.25)])
