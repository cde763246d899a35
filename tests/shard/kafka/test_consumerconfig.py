"""
Unit tests of L{odin_ws.shard.kafka.consumerconfig}: the librdkafka settings
a shard's consumer is built with, as L{KafkaIngest.consumer_config} hands
them to librdkafka.
"""

from __future__ import annotations

from confluent_kafka import Consumer
from twisted.internet import reactor
from twisted.trial.unittest import SynchronousTestCase

from odin_ws.shard.kafka.ingest import KafkaIngest
from tests.helpers.kafkafakes import make_settings


class ConsumerConfigTests(SynchronousTestCase):
    """The consumer's librdkafka settings from the typed settings."""

    def test_consumerConfig(self):
        """
        kafka.fetch_wait_max_ms reaches librdkafka as fetch.wait.max.ms
        (default 5: Tansu answers a fetch only when it expires), and
        kafka.consumer_config still has the last word.
        """
        default = KafkaIngest(reactor, make_settings("b:1", "t", "g"), 0, None, None)
        self.assertEqual(default.consumer_config()["fetch.wait.max.ms"], 5)
        custom = KafkaIngest(reactor, make_settings(
            "b:1", "t", "g", **{"kafka.fetch_wait_max_ms": 50,
                                "kafka.consumer_config": {"fetch.wait.max.ms": 7}}), 0, None, None)
        self.assertEqual(custom.consumer_config()["fetch.wait.max.ms"], 7)

    def test_heartbeatTwentiethOfSession(self):
        """
        The heartbeat is a twentieth of the session, 100 ms to 1 s: a broker
        pause shorter than the session by more than that leaves librdkafka's
        own session timer running (no SESSTMOUT, no partitions lost); at a
        third (3.3 s at 10 s) an 8 s pause lost them (docs/operations.md).
        """
        def heartbeat(session: int) -> int:
            settings = make_settings("b:1", "t", "g", **{"kafka.session_timeout_ms": session})
            return KafkaIngest(reactor, settings, 0, None, None).consumer_config()[
                "heartbeat.interval.ms"]
        self.assertEqual([heartbeat(s) for s in (1000, 6000, 10000, 45000)], [100, 300, 500, 1000])

    def test_cooperativeByDefault(self):
        """
        The group rebalances cooperatively (cooperative-sticky) unless
        kafka.cooperative_rebalance is off, and kafka.consumer_config's
        strategy wins over both.
        """
        strategy = "partition.assignment.strategy"
        default = KafkaIngest(reactor, make_settings("b:1", "t", "g"), 0, None, None)
        self.assertEqual(default.consumer_config()[strategy], "cooperative-sticky")
        off = KafkaIngest(reactor, make_settings(
            "b:1", "t", "g", **{"kafka.cooperative_rebalance": False}), 0, None, None)
        self.assertNotIn(strategy, off.consumer_config())
        custom = KafkaIngest(reactor, make_settings(
            "b:1", "t", "g", **{"kafka.consumer_config": {strategy: "roundrobin"}}), 0, None, None)
        self.assertEqual(custom.consumer_config()[strategy], "roundrobin")

    def test_staticMembership(self):
        """
        With kafka.static_membership each shard joins under the instance id
        <node_id>-shard<index>: stable across its restarts, different for
        every shard of the node and for every node id; without it there is
        no instance id.
        """
        def conf(node: str, shard: int, static: bool = True) -> dict:
            settings = make_settings("b:1", "t", node, **{"kafka.static_membership": static})
            return KafkaIngest(reactor, settings, shard, None, None).consumer_config()
        self.assertEqual(conf("n1", 0)["group.instance.id"], "n1-shard0")
        self.assertEqual(conf("n1", 0)["group.instance.id"], conf("n1", 0)["group.instance.id"])
        ids = {conf(node, shard)["group.instance.id"] for node in ("n1", "n2") for shard in (0, 1)}
        self.assertEqual(len(ids), 4)
        self.assertNotIn("group.instance.id", conf("n1", 0, static=False))

    def test_consumerGroupProtocol(self):
        """
        kafka.group_protocol consumer (KIP-848) asks librdkafka for it and
        leaves out the settings the broker owns under it (librdkafka refuses
        to create a consumer with them); the classic protocol has them.
        """
        owned = ("session.timeout.ms", "heartbeat.interval.ms", "partition.assignment.strategy")
        kip848 = KafkaIngest(reactor, make_settings(
            "b:1", "t", "g", **{"kafka.group_protocol": "consumer"}), 0, None, None)
        conf = kip848.consumer_config()
        self.assertEqual(conf["group.protocol"], "consumer")
        for key in owned:
            self.assertNotIn(key, conf)
        Consumer({k: v for k, v in conf.items() if not callable(v) and k != "logger"}).close()
        classic = KafkaIngest(reactor, make_settings("b:1", "t", "g"), 0, None, None)
        self.assertNotIn("group.protocol", classic.consumer_config())
        for key in owned:
            self.assertIn(key, classic.consumer_config())

    def test_readCommitted(self):
        """
        The consumer reads committed records only (records of aborted
        transactions are never delivered), unless kafka.consumer_config says
        otherwise.
        """
        default = KafkaIngest(reactor, make_settings("b:1", "t", "g"), 0, None, None)
        self.assertEqual(default.consumer_config()["isolation.level"], "read_committed")
