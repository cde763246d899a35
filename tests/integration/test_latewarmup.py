"""
A partition added to the topic under a running node of one shard is first
assigned after the shard's start warm-up: its history is read back in a run
of its own (L{odin_ws.shard.kafka.warmup.LateRuns}) while its events wait at
the warm gate. Against Apache Kafka (partitions added; a client quota slows
the run) and the real C{twistd odinws} processes: /health shows the run
while it reads, then how it ended.
"""

from __future__ import annotations

from tests.helpers.broker import apache_kafka
from tests.helpers.node import node_metric, wait_for
from tests.helpers.quota import set_consumer_byte_rate
from tests.helpers.topics import TopicNodeCase


class LateWarmupHealthTests(TopicNodeCase):
    """
    One shard, a topic of one partition grown to two; the warm-up's client
    id throttled to 1 byte/s once the start's warm-up ended, so the added
    partition's run reads its first record batch and then waits out the
    broker's throttle until history.warmup_timeout cuts it.
    """

    shards = 1
    partitions = 1
    tokens = 2
    prefix = "latew"
    # Apache Kafka whatever the run's broker: Tansu refuses CreatePartitions
    # and has no client quotas.
    broker_of = staticmethod(apache_kafka)

    def test_added_partition_warmup_in_health(self):
        """
        The topic grows from one partition to two, with records on the new
        one (each its own batch) before the node sees it: /health then shows
        the shard's late warm-up reading that partition (reading_for counted,
        warming_partitions listed, degraded warming_partitions, still 200),
        and later its end: no run reading or waiting, one run ended (the
        last: state done, that partition), counted in
        odinws_history_late_warmups_total. Without the feature the shard's
        warmup status has no late runs and /health no warming_partitions.
        """
        node = self.node(**{"history.warmup_timeout": 8})
        wait_for(lambda: node.assigned()[0], 60, 0.2, "the partition assigned")

        def start_ended() -> dict | None:
            [shard] = node.health()[1]["shards"]
            warmup = shard["warmup"] or {}
            return warmup if warmup.get("state") == "done" else None
        wait_for(start_ended, 60, 0.1, "the start's warm-up done")
        warmup_client = f"odinws-{node.node_id}-warmup"
        set_consumer_byte_rate(self.broker.bootstrap, warmup_client, 1.0)
        self.addCleanup(set_consumer_byte_rate, self.broker.bootstrap, warmup_client, None)

        self.broker.add_partitions(self.topic, 2)
        self.partitions = 2
        for _ in range(8):      # flushed one by one: a record batch each
            self.produce(1)
        added = f"{self.topic}[1]"

        def reading() -> tuple[int, dict] | None:
            status, body = node.health()
            late = body["shards"][0]["warmup"]["late"]
            return (status, body) if late["reading"] == [added] else None
        status, body = wait_for(reading, 90, 0.1, "the added partition's warm-up reading")
        late = body["shards"][0]["warmup"]["late"]
        self.assertEqual((status, body["warming_partitions"], late["runs"]), (200, [added], 0),
                         body)
        self.assertIn("warming_partitions", body["degraded"])
        self.assertIsNotNone(late["reading_for"], late)

        def ended() -> dict | None:
            body = node.health()[1]
            return body if body["shards"][0]["warmup"]["late"]["runs"] else None
        body = wait_for(ended, 60, 0.2, "the added partition's warm-up ended")
        late = body["shards"][0]["warmup"]["late"]
        self.assertEqual((late["reading"], late["reading_for"], late["waiting"], late["runs"],
                          body["warming_partitions"]), ([], None, [], 1, []), body)
        self.assertEqual((late["last"]["state"], late["last"]["partitions"]), ("done", [added]),
                         late)
        self.assertNotIn("warming_partitions", body["degraded"])
        self.assertEqual(body["overdue_warmups"], [])
        # Done, or cut by the timeout (incomplete) as the throttle allows:
        # how much one fetch brings back is the broker's to decide.
        self.assertEqual(node_metric(node, "odinws_history_late_warmups_total", 'result="done"')
                         + node_metric(node, "odinws_history_late_warmups_total",
                                       'result="incomplete"'), 1)
