"""
/health of a real node when it cannot deliver: its Kafka broker stopped
(503 kafka_unreachable past kafka.unreachable_grace, 200 again once it is
back) and its topic missing (503 topics_missing, then 200 with the stale
error gone once the topic exists and is assigned).
"""

from __future__ import annotations

import os
import uuid
from typing import cast

from twisted.trial import unittest

from tests.helpers.broker import FAST_KAFKA, new_broker, shared_broker
from tests.helpers.node import Node, http_get, wait_for

#: The consumer sees a topic created after its start at its next metadata
#: refresh (5 minutes by librdkafka's default).
QUICK_METADATA = {**cast(dict, FAST_KAFKA["kafka.consumer_config"]),
                  "topic.metadata.refresh.interval.ms": 500}


class HealthCase(unittest.TestCase):

    def setUp(self):
        self.topic = f"health-{uuid.uuid4().hex[:8]}"
        self.workdir = os.path.abspath(self.mktemp())
        os.makedirs(self.workdir)

    def node(self, brokers: str, **settings) -> Node:
        node = Node(self.workdir, brokers, shards=2, settings={
            **FAST_KAFKA, "kafka.topics": {self.topic: "trade"},
            "kafka.consumer_config": QUICK_METADATA, **settings})
        self.addCleanup(node.stop)
        return node

    def health_is(self, node: Node, status: str, timeout: float = 60.0) -> dict:
        def reached():
            code, body = node.health()
            return body if body["status"] == status else None
        return wait_for(reached, timeout, 0.2, f"/health {status}")


class BrokerStoppedTests(HealthCase):

    def test_unreachable_then_back(self):
        """
        With the node's only broker stopped, /health turns 503
        kafka_unreachable once kafka.unreachable_grace has passed (the
        reason says for how long), and odinws_ready 0; with the broker back
        (and its topic: Tansu's storage is in memory) it is 200 ok again and
        no shard shows the old error.
        """
        broker = new_broker(self.workdir)
        broker.start()
        self.addCleanup(broker.stop)
        broker.create_topics([self.topic], partitions=2)
        node = self.node(broker.bootstrap, **{"kafka.unreachable_grace": 3.0})
        node.start()
        broker.down()
        body = self.health_is(node, "kafka_unreachable")
        self.assertEqual(node.health()[0], 503)
        self.assertFalse(body["kafka_connected"])
        self.assertRegex(body["reason"], r"^no shard has reached a Kafka broker for \d+s")
        self.assertTrue(all(s["kafka"]["disconnected_for"] >= 3.0 for s in body["shards"]))
        self.assertIn(b"\nodinws_ready 0.0\n", http_get(node.port, "/metrics")[2])

        broker.up()
        broker.create_topics([self.topic], partitions=2)
        node.wait_ready()
        body = self.health_is(node, "ok")
        self.assertTrue(body["kafka_connected"])

        # librdkafka may report the refused connection of the outage once
        # more after the consumer runs again (its bootstrap entry
        # reconnects on its own schedule); the errors are cleared when the
        # partitions are assigned, which the node reaches on its own.
        def cleared():
            body = node.health()[1]
            errors = [s["kafka"]["last_error"] for s in body["shards"]]
            return body if body["status"] == "ok" and errors == [None, None] else None
        body = wait_for(cleared, 60, 0.2, "ok with no shard showing the outage's error")
        self.assertTrue(body["kafka_connected"])


class MissingTopicTests(HealthCase):

    def test_missing_then_created(self):
        """
        A node whose only configured topic does not exist answers 503
        topics_missing naming it (it delivers nothing, though its broker
        answers); once the topic is created and its partitions assigned, 200
        ok, with no missing topic and the "not available" error cleared.
        """
        broker = shared_broker()
        node = self.node(broker.bootstrap)
        node.start(wait_ready=False)
        body = self.health_is(node, "topics_missing")
        self.assertEqual(node.health()[0], 503)
        self.assertEqual(body["missing_topics"], [self.topic])
        self.assertIn(self.topic, body["reason"])
        # The broker answers (the consumer's statistics say so within a second).
        wait_for(lambda: node.health()[1]["kafka_connected"], 10, 0.2, "kafka_connected")
        self.assertEqual(node.health()[1]["status"], "topics_missing")

        broker.create_topics([self.topic], partitions=2)
        # Every shard has its partition, so no shard still has the error.
        node.wait_spread()
        body = self.health_is(node, "ok")
        self.assertEqual(body["missing_topics"], [])
        for shard in body["shards"]:
            self.assertNotIn("not available", shard["kafka"]["last_error"] or "")
