"""
Unit tests of L{odin_ws.shard.kafka.placement} as the loop meets it: events
carry their topic's epoch, and a partition whose offsets go back gets a new
one (where partitions without a usable offset start: test_consumerloop's
OffsetsLostTests).
"""

from __future__ import annotations

import queue
import threading

from confluent_kafka import TopicPartition
from twisted.trial.unittest import SynchronousTestCase

from odin_ws.common import metrics
from odin_ws.shard.kafka.consumerloop import ConsumerLoop
from odin_ws.shard.kafka.records import RecordMapper
from tests.helpers import sample
from tests.helpers.fakes import FakeKafkaMessage
from tests.helpers.kafkafakes import FakeIncarnations, FakeIngest, RebalanceConsumer, make_settings


class ConsumerLoopEpochTests(SynchronousTestCase):
    """ConsumerLoop tags events with their topic's epoch and notices logs that went back."""

    def setUp(self):
        settings = make_settings("127.0.0.1:1", "t", "g")
        self.ingest = FakeIngest()
        self.incarnations = FakeIncarnations({"t": "e1"})
        self.loop = ConsumerLoop(self.ingest, None, RecordMapper.from_settings(settings.kafka),
                                 settings.kafka, threading.Event(), queue.SimpleQueue(), 4,
                                 self.incarnations)
        self.loop.on_assign(RebalanceConsumer(), [TopicPartition("t", 0), TopicPartition("t", 1)])

    def handle(self, *offsets: tuple[int, int]) -> list:
        self.loop.handle([FakeKafkaMessage("t", p, o) for p, o in offsets])
        return self.ingest.batches[-1]

    def test_assignLooksUpAndTags(self):
        """
        An assignment looks the topics' identity up and exports the lag of
        its partitions (at 0 until the statistics say more); every event
        carries the epoch and one consumed-at time per batch; the broker's
        share of the latency is observed once per event.
        """
        self.assertEqual(self.incarnations.lookups, 1)
        self.assertEqual(metrics.REGISTRY.get_sample_value(
            "odinws_kafka_consumer_lag", {"topic": "t", "partition": "1"}), 0.0)
        observed = sample("odinws_broker_latency_seconds_count")
        events = self.handle((0, 5), (1, 7))
        self.assertEqual([e.epoch for e in events], ["e1", "e1"])
        self.assertEqual(sample("odinws_broker_latency_seconds_count") - observed, 2)
        self.assertEqual(len({e.consumed for e in events}), 1)
        self.assertGreater(events[0].consumed, 0)

    def test_rewindWithNewTopicId(self):
        """
        Offsets going back while assigned trigger a lookup before the batch
        is handed over: a new topic id gives the new records its epoch, with
        an audit line and the rewind counted.
        """
        rewinds = sample("odinws_kafka_offset_rewinds_total")
        self.handle((0, 100), (0, 101))
        self.incarnations.ids["t"] = "e2"
        events = self.handle((0, 0), (0, 1))
        self.assertEqual([(e.offset, e.epoch) for e in events], [(0, "e2"), (1, "e2")])
        self.assertEqual(sample("odinws_kafka_offset_rewinds_total") - rewinds, 1)
        self.assertIn("new incarnation (epoch e1 -> e2)", self.ingest.audited[-1])

    def test_rewindWithSameTopicId(self):
        """
        A log that went back under the same identity (reset in place) still
        gets a new epoch, so the de-duplication marks make way for it.
        """
        self.handle((0, 100))
        events = self.handle((0, 3))
        self.assertNotIn(events[0].epoch, ("", "e1"))
        self.assertIn("went back from offset 100 to 3", self.ingest.audited[-1])

    def test_reassignmentIsNoRewind(self):
        """
        Re-reading from the committed offset after a new assignment is not
        taken for a new log: the epoch stays.
        """
        self.handle((0, 100))
        self.loop.on_revoke(RebalanceConsumer(), [TopicPartition("t", 0)])
        self.loop.on_assign(RebalanceConsumer(), [TopicPartition("t", 0)])
        events = self.handle((0, 90))
        self.assertEqual(events[0].epoch, "e1")
        self.assertEqual(self.ingest.audited, [])
