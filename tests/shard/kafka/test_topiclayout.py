"""Tests for L{odin_ws.shard.kafka.topiclayout}, with a fake admin client."""

from __future__ import annotations

from types import SimpleNamespace

from confluent_kafka import OFFSET_INVALID, TopicPartition
from twisted.trial import unittest

from odin_ws.common.events import Partition
from odin_ws.shard.kafka.incarnations import admin_config
from odin_ws.shard.kafka.topiclayout import TopicLayout


class FakeAdmin:
    """Metadata of topic C{t} with C{partitions}."""

    def __init__(self, partitions: int):
        self.partitions = partitions

    def list_topics(self, topic=None, timeout=None):
        topic = SimpleNamespace(partitions=dict.fromkeys(range(self.partitions)), error=None)
        return SimpleNamespace(topics={"t": topic})

    def list_consumer_group_offsets(self, requests, request_timeout):
        raise AssertionError("a coordinator request through the admin client")


class FakeConsumer:
    """The group's committed offsets of C{t}, by partition, as C{Consumer.committed} answers."""

    def __init__(self, committed: dict[int, int]):
        self.offsets = committed
        self.asked: list[list[int]] = []

    def committed(self, partitions, timeout=None):
        self.asked.append([tp.partition for tp in partitions])
        return [TopicPartition("t", tp.partition, self.offsets.get(tp.partition, OFFSET_INVALID))
                for tp in partitions]


def tps(*partitions: int) -> list[TopicPartition]:
    return [TopicPartition("t", p) for p in partitions]


class TopicLayoutTests(unittest.TestCase):
    def layout(self, admin: FakeAdmin) -> TopicLayout:
        return TopicLayout({}, ["t"], admin_factory=lambda config: admin)

    def test_partitionsAddedAreNew(self):
        """
        The partitions there at the first assignment are not new; those
        past that count, assigned later, are, once each.
        """
        admin = FakeAdmin(2)
        layout = self.layout(admin)
        self.assertEqual(layout.new(tps(0, 1)), [])
        admin.partitions = 4
        self.assertEqual([tp.partition for tp in layout.new(tps(1, 2, 3))], [2, 3])
        self.assertEqual(layout.new(tps(2, 3)), [])

    def test_topicGoneBeforeFirstAssignment(self):
        """A topic reported missing before the counts were taken: all its partitions are new."""
        layout = self.layout(FakeAdmin(2))
        layout.gone("t")
        self.assertEqual([tp.partition for tp in layout.new(tps(0, 1))], [0, 1])

    def test_partitionsAddedAppeared(self):
        """
        The partitions L{TopicLayout.new} found new are remembered as
        appeared (all of their log is newer than the shard); the others not.
        """
        admin = FakeAdmin(2)
        layout = self.layout(admin)
        layout.new(tps(0, 1))
        admin.partitions = 3
        layout.new(tps(2))
        self.assertEqual([layout.appeared(Partition("t", p)) for p in range(3)],
                         [False, False, True])

    def test_unreadPartitions(self):
        """
        A partition the group has no offset for while it has one for some
        other partition of the topic was never read by the group (added
        while the node was down); with no offsets at all (a new group) or
        one of its own it is not. The offsets are the consumer's lookup,
        for every partition of the topic; the admin client never asks the
        coordinator.
        """
        layout = self.layout(FakeAdmin(4))
        consumer = FakeConsumer({0: 10, 1: 12})
        self.assertTrue(layout.unread(consumer, "t", 3))
        self.assertFalse(layout.unread(consumer, "t", 1))
        self.assertEqual(consumer.asked[-1], [0, 1, 2, 3])
        self.assertFalse(self.layout(FakeAdmin(4)).unread(FakeConsumer({}), "t", 3))


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
