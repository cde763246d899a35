"""
Unit tests of L{odin_ws.shard.kafka.membership}: the rebalance callbacks'
answers to librdkafka under each group protocol.
"""

from __future__ import annotations

import queue
import threading

from confluent_kafka import OFFSET_BEGINNING, TopicPartition
from twisted.trial.unittest import SynchronousTestCase

from odin_ws.shard.kafka.consumerloop import ConsumerLoop
from odin_ws.shard.kafka.records import RecordMapper
from tests.helpers import sample
from tests.helpers.fakes import FakeKafkaMessage
from tests.helpers.kafkafakes import FakeIncarnations, FakeIngest, RebalanceConsumer, make_settings


class ConsumerLoopRebalanceTests(SynchronousTestCase):
    """
    The rebalance callbacks answer librdkafka with the calls of the group's
    protocol (issue 16: a shard crash must not stop the other shards).
    """

    def loop(self, cooperative: bool) -> ConsumerLoop:
        settings = make_settings("127.0.0.1:1", "t", "g")
        self.ingest = FakeIngest()
        return ConsumerLoop(self.ingest, None, RecordMapper.from_settings(settings.kafka),
                            settings.kafka, threading.Event(), queue.SimpleQueue(), 4,
                            FakeIncarnations({"t": "e1"}), cooperative=cooperative)

    def test_cooperativeMovesOnlyWhatChanges(self):
        """
        Cooperative: each callback gets only the partitions that move and
        answers with incremental_assign/incremental_unassign; a partition
        kept through the rebalance stays assigned with its position, so its
        next records are neither a rewind nor dropped.
        """
        loop = self.loop(cooperative=True)
        consumer = RebalanceConsumer()
        loop.on_assign(consumer, [TopicPartition("t", 0), TopicPartition("t", 1)])
        loop.handle([FakeKafkaMessage("t", 0, 10), FakeKafkaMessage("t", 1, 20)])
        loop.on_revoke(consumer, [TopicPartition("t", 1)])
        loop.on_assign(consumer, [])
        loop.handle([FakeKafkaMessage("t", 0, 11)])
        self.assertEqual(consumer.calls, [("incremental_assign", [("t", 0), ("t", 1)]),
                                          ("incremental_unassign", [("t", 1)]),
                                          ("incremental_assign", [])])
        self.assertEqual(loop.assignment, {("t", 0)})
        self.assertEqual(loop.positions, {("t", 0): 11})
        self.assertEqual([e.offset for e in self.ingest.batches[-1]], [11])
        self.assertEqual(self.ingest.audited, [])

    def test_keptPartitionOfRecreatedTopicReadFromItsStart(self):
        """
        Cooperative: when the lookup of a rebalance finds the topic
        recreated (Tansu replaced under the node), a partition kept through
        the rebalance is read from the beginning of the new log, not from
        its old offset (which skipped the new log's first records), and its
        records carry the new epoch without being taken for a rewind.
        """
        loop = self.loop(cooperative=True)
        consumer = RebalanceConsumer()
        loop.consumer = consumer
        loop.on_assign(consumer, [TopicPartition("t", 0), TopicPartition("t", 1)])
        loop.handle([FakeKafkaMessage("t", 0, 10), FakeKafkaMessage("t", 1, 720)])
        loop.on_revoke(consumer, [TopicPartition("t", 0)])
        loop.incarnations.ids["t"] = "e2"
        loop.on_assign(consumer, [])
        self.assertEqual(consumer.calls[-2:], [("incremental_assign", []),
                                               ("seek", [("t", 1, OFFSET_BEGINNING)])])
        loop.handle([FakeKafkaMessage("t", 1, 0)])
        self.assertEqual([(e.offset, e.epoch) for e in self.ingest.batches[-1]], [(0, "e2")])
        self.assertEqual(len(self.ingest.audited), 1)
        self.assertIn("new incarnation (epoch e1 -> e2)", self.ingest.audited[0])

    def test_eagerAssignsTheWhole(self):
        """Eager: assign() with the whole new assignment, unassign() on revoke."""
        loop = self.loop(cooperative=False)
        consumer = RebalanceConsumer()
        loop.on_assign(consumer, [TopicPartition("t", 0), TopicPartition("t", 1)])
        loop.on_revoke(consumer, [TopicPartition("t", 0), TopicPartition("t", 1)])
        loop.on_assign(consumer, [TopicPartition("t", 0)])
        self.assertEqual(consumer.calls, [("assign", [("t", 0), ("t", 1)]), ("unassign", []),
                                          ("assign", [("t", 0)])])
        self.assertEqual(loop.assignment, {("t", 0)})


class AssignmentLostTests(SynchronousTestCase):

    def test_lostIsCountedSaidAndRevoked(self):
        """
        Partitions the group took away without a rebalance (librdkafka's
        on_lost: the session timed out through a broker pause) are counted
        in odinws_kafka_assignments_lost_total, said once, and given up like
        a revoke; an empty loss is neither counted nor said.
        """
        settings = make_settings("127.0.0.1:1", "t", "g")
        ingest = FakeIngest()
        logged: list[str] = []
        ingest.log = lambda level, fmt, **kw: logged.append(fmt.format(**kw))
        consumer = RebalanceConsumer()
        loop = ConsumerLoop(ingest, consumer, RecordMapper.from_settings(settings.kafka),
                            settings.kafka, threading.Event(), queue.SimpleQueue(), 4,
                            FakeIncarnations({"t": "e1"}), cooperative=True)
        loop.on_assign(consumer, [TopicPartition("t", 0), TopicPartition("t", 1)])
        before = sample("odinws_kafka_assignments_lost_total") or 0
        loop.on_lost(consumer, [TopicPartition("t", 0), TopicPartition("t", 1)])
        self.assertEqual(loop.assignment, set())
        self.assertEqual(consumer.calls[-1], ("incremental_unassign", [("t", 0), ("t", 1)]))
        loop.on_lost(consumer, [])
        self.assertEqual(sample("odinws_kafka_assignments_lost_total"), before + 1)
        self.assertEqual([line for line in logged if "lost" in line],
                         ["Kafka consumer lost its 2 partitions (group session timed out or "
                          "evicted): rejoining the group"])
