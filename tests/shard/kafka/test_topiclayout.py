"""Tests for L{odin_ws.shard.kafka.topiclayout}, with a fake admin client."""

from __future__ import annotations

from concurrent.futures import Future
from types import SimpleNamespace

from confluent_kafka import OFFSET_BEGINNING, OFFSET_INVALID, TopicPartition
from twisted.trial import unittest

from odin_ws.shard.kafka.incarnations import admin_config
from odin_ws.shard.kafka.topiclayout import TopicLayout


class FakeAdmin:
    """Metadata of topic C{t} with C{partitions}; committed offsets by partition."""

    def __init__(self, partitions: int, committed: dict[int, int]):
        self.partitions = partitions
        self.committed = committed
        self.asked: list[list[int]] = []

    def list_topics(self, topic=None, timeout=None):
        topic = SimpleNamespace(partitions=dict.fromkeys(range(self.partitions)), error=None)
        return SimpleNamespace(topics={"t": topic})

    def list_consumer_group_offsets(self, requests, request_timeout):
        [request] = requests
        self.asked.append([tp.partition for tp in request.topic_partitions])
        future: Future = Future()
        future.set_result(SimpleNamespace(topic_partitions=[
            TopicPartition("t", tp.partition, self.committed.get(tp.partition, OFFSET_INVALID))
            for tp in request.topic_partitions]))
        return {request.group_id: future}


def tps(*partitions: int) -> list[TopicPartition]:
    return [TopicPartition("t", p) for p in partitions]


class TopicLayoutTests(unittest.TestCase):
    def layout(self, admin: FakeAdmin) -> TopicLayout:
        return TopicLayout({}, "g", ["t"], admin_factory=lambda config: admin)

    def test_partitionsAddedAreNew(self):
        """
        The partitions there at the first assignment are not new; those
        past that count, assigned later, are, once each.
        """
        admin = FakeAdmin(2, {})
        layout = self.layout(admin)
        self.assertEqual(layout.new(tps(0, 1)), [])
        admin.partitions = 4
        self.assertEqual([tp.partition for tp in layout.new(tps(1, 2, 3))], [2, 3])
        self.assertEqual(layout.new(tps(2, 3)), [])

    def test_topicGoneBeforeFirstAssignment(self):
        """A topic reported missing before the counts were taken: all its partitions are new."""
        layout = self.layout(FakeAdmin(2, {}))
        layout.gone("t")
        self.assertEqual([tp.partition for tp in layout.new(tps(0, 1))], [0, 1])

    def test_fromBeginningOnlyWithoutCommittedOffset(self):
        """
        Of the new partitions, those the group has an offset for keep it
        (another shard read them already); the others start at the beginning.
        """
        admin = FakeAdmin(4, {2: 17})
        layout = self.layout(admin)
        new = tps(2, 3)
        started = layout.from_beginning(new)
        self.assertEqual([tp.partition for tp in started], [3])
        self.assertEqual([tp.offset for tp in new], [TopicPartition("t", 2).offset,
                                                     OFFSET_BEGINNING])
        self.assertEqual(admin.asked, [[2, 3]])
        self.assertEqual(layout.from_beginning([]), [])
        self.assertEqual(len(admin.asked), 1)

    def test_unreadPartitions(self):
        """
        A partition the group has no offset for while it has one for some
        other partition of the topic was never read by the group (added
        while the node was down); with no offsets at all (a new group) or
        one of its own it is not.
        """
        admin = FakeAdmin(4, {0: 10, 1: 12})
        layout = self.layout(admin)
        self.assertTrue(layout.unread("t", 3))
        self.assertFalse(layout.unread("t", 1))
        self.assertEqual(admin.asked[-1], [0, 1, 2, 3])
        self.assertFalse(self.layout(FakeAdmin(4, {})).unread("t", 3))


class AdminConfigTests(unittest.TestCase):
    def test_noTopicAutoCreation(self):
        """
        The admin client the layout and the incarnations use keeps the
        consumer's connection settings and never has a lookup create a
        topic (librdkafka's producer-type default would, on brokers that
        allow it: a deleted topic came back with one partition).
        """
        config = admin_config({"bootstrap.servers": "b:9092", "group.id": "g",
                               "security.protocol": "SSL"})
        self.assertEqual(config, {"bootstrap.servers": "b:9092", "security.protocol": "SSL",
                                  "allow.auto.create.topics": False})
