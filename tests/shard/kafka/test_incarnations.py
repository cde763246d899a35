"""
Unit tests of L{odin_ws.shard.kafka.incarnations}: topic identities looked
up with an admin client (a fake one here, shaped like librdkafka's: its
lookups go to the broker its last metadata named the controller). The same
case on a real three-broker Apache Kafka is
C{tests.integration.test_kafka_cluster.ControllerKilledTests}.
"""

from __future__ import annotations

import uuid
from concurrent.futures import Future
from types import SimpleNamespace

from confluent_kafka import KafkaError, KafkaException
from twisted.trial.unittest import SynchronousTestCase

from odin_ws.shard.kafka.incarnations import TopicIncarnations


def _done(result=None, error: Exception | None = None) -> Future:
    future: Future = Future()
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
    return future


class ControllerAdmin:
    """
    An admin client whose DescribeCluster and DescribeTopics go to the
    broker it takes for the controller, and time out while that one is in
    C{dead}; a metadata request (C{list_topics}) names C{next_controller}.
    """

    def __init__(self, config):
        self.controller = 1
        self.next_controller = 1
        self.dead: set[int] = set()
        self.metadata_requests = 0
        self.topic_ids = {"t": uuid.UUID(int=7)}

    def _answer(self, result):
        if self.controller in self.dead:
            return _done(error=KafkaException(KafkaError(
                KafkaError._TIMED_OUT, "Timed out waiting for controller")))
        return _done(result)

    def describe_cluster(self, request_timeout):
        return self._answer(SimpleNamespace(cluster_id="c1"))

    def describe_topics(self, topics, request_timeout):
        return {name: self._answer(SimpleNamespace(topic_id=self.topic_ids[name]))
                for name in topics.topic_names}

    def list_topics(self, timeout):
        self.metadata_requests += 1
        self.controller = self.next_controller
        return SimpleNamespace(controller_id=self.controller)


class RefreshTests(SynchronousTestCase):

    def setUp(self):
        self.admins: list[ControllerAdmin] = []

        def factory(config):
            self.admins.append(ControllerAdmin(config))
            return self.admins[-1]
        self.incarnations = TopicIncarnations({}, admin_factory=factory)

    def test_firstLookupGivesEpochs(self):
        """A first lookup reports every topic as changed (from unknown) and knows its epoch."""
        self.assertEqual(self.incarnations.refresh(["t"]), {"t": ""})
        self.assertNotEqual(self.incarnations.epoch("t"), "")
        self.assertIsNone(self.incarnations.failure)
        self.assertEqual(self.incarnations.refresh(["t"]), {})

    def test_controllerGoneRenewsMetadata(self):
        """
        When the broker the admin client takes for the controller is gone,
        a lookup fails (the failure kept, the epochs too) and refreshes the
        metadata, so the next lookup asks the broker it names now and
        succeeds. Without the refresh every later lookup would fail.
        """
        self.incarnations.refresh(["t"])
        epoch = self.incarnations.epoch("t")
        [admin] = self.admins
        admin.dead.add(1)
        admin.next_controller = 2
        self.assertIsNone(self.incarnations.refresh(["t"]))
        self.assertIn("Timed out waiting for controller", str(self.incarnations.failure))
        self.assertEqual(self.incarnations.epoch("t"), epoch)
        self.assertEqual(admin.metadata_requests, 1)
        self.assertEqual(self.incarnations.refresh(["t"]), {})
        self.assertIsNone(self.incarnations.failure)

    def test_renewNamesTheDeadBrokerAgain(self):
        """
        Until the cluster fences a killed broker its metadata may name it
        again: each failed lookup refreshes once more, and the first one
        after a live broker is named succeeds.
        """
        self.incarnations.refresh(["t"])
        [admin] = self.admins
        admin.dead.add(1)
        self.assertIsNone(self.incarnations.refresh(["t"]))
        self.assertIsNone(self.incarnations.refresh(["t"]))
        self.assertEqual(admin.metadata_requests, 2)
        admin.next_controller = 3
        self.assertIsNone(self.incarnations.refresh(["t"]))
        self.assertEqual(self.incarnations.refresh(["t"]), {})

    def test_newTopicIdIsNewEpoch(self):
        """A topic recreated (a new topic id) gets a new epoch, reported with the old one."""
        self.incarnations.refresh(["t"])
        old = self.incarnations.epoch("t")
        self.admins[0].topic_ids["t"] = uuid.UUID(int=8)
        self.assertEqual(self.incarnations.refresh(["t"]), {"t": old})
        self.assertNotEqual(self.incarnations.epoch("t"), old)
