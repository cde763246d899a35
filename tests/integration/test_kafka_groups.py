"""
The consumer group protocols odinws can use on Apache Kafka (issue 21):
the classic one (the default; with static membership, see
test_shard_faults's ShardCrashTests) and KIP-848's consumer protocol
(C{kafka.group_protocol: consumer}), where the broker assigns partitions
and owns the session, heartbeat and assignor settings.
"""

from __future__ import annotations

from tests.helpers.broker import apache_kafka
from tests.helpers.node import wait_for
from tests.helpers.topics import TopicNodeCase


class ConsumerProtocolTests(TopicNodeCase):
    """
    Two shards on two partitions, in a KIP-848 consumer group: on Apache
    Kafka whatever this run's broker (on Tansu 0.6 such a member was assigned
    nothing within 20 s).
    """

    prefix = "kip848"
    broker_of = staticmethod(apache_kafka)

    def test_partitionsSplitEveryEventOnce(self):
        """
        With kafka.group_protocol consumer the shards join the group (the
        broker gives each one partition) and a client gets every event of
        both partitions once, in order per partition.
        """
        node = self.node(**{"kafka.group_protocol": "consumer"})
        wait_for(lambda: node.split([1, 1]), 60, 0.2, "one partition per shard")
        client = self.connect(node)
        client.subscribe("odin.token.*.trade")
        self.produce(30)
        got: dict[int, list[int]] = {}
        for e in client.collect(30, 60):
            got.setdefault(int(e["pos"].split(":")[1]), []).append(e["data"]["seq"])
        self.assertEqual(got, self.produced)
        [group] = self.broker.admin.describe_consumer_groups([f"odinws-{node.node_id}"]).values()
        self.assertEqual(str(group.result(10).type), "ConsumerGroupType.CONSUMER")


class DuplicateNodeIdTests(TopicNodeCase):
    """
    Two nodes given one node_id (a cloned VM's host name), with static
    membership: on Apache Kafka whatever this run's broker (on Tansu 0.6 a
    second static member is never assigned).
    """

    prefix = "dupid"
    shards = 1
    partitions = 1
    broker_of = staticmethod(apache_kafka)

    def test_fencedShardReportsWhy(self):
        """
        The second node's shard joins with the first one's instance id; the
        broker fences the first one out, and its /health shows Kafka state
        error, no partitions, and a last error naming the instance id and
        the node_id that must be unique, instead of "running" with a
        consumer that reads nothing.
        """
        twin = f"twin-{self.topic}"
        static = {"kafka.static_membership": True}
        first = self.node(node_id=twin, **static)
        self.node(node_id=twin, **static)

        def fenced():
            kafka = first.health()[1]["shards"][0].get("kafka") or {}
            return kafka if kafka.get("state") == "error" else None
        kafka = wait_for(fenced, 60, 0.2, "the first node's shard fenced out")
        self.assertEqual(kafka["assigned"], [])
        self.assertIn(f"{twin}-shard0", kafka["last_error"])
        self.assertIn("node_id must be unique", kafka["last_error"])
