"""
A node of one shard whose shard is killed (kill -9) and whose consumer
re-reads its partition from an old commit (L{odin_ws.shard.delivery.warmgate}),
against Apache Kafka, the real C{twistd odinws} parent and shard processes
and C{websockets} clients: a client connected after the restart must not
get the events the node delivered before as live ones.
"""

from __future__ import annotations

import os
import signal

from tests.helpers.broker import apache_kafka
from tests.helpers.node import wait_for
from tests.helpers.quota import set_consumer_byte_rate
from tests.helpers.topics import TopicNodeCase


class OneShardRereadTests(TopicNodeCase):
    """
    One shard, one partition: no hub marks, ever. The warm-up that runs at
    the restart is slowed (a client quota on its client id), so the group
    consumer's re-read comes while it still runs, as it does whenever the
    past to read back is large or the broker slow.
    """

    prefix = "gate"
    shards = 1
    partitions = 1
    tokens = 2
    # Apache Kafka whatever the run's broker: client quotas, and a dead
    # member's partition waits out its session (6 s at least there), which
    # leaves a newcomer the time to subscribe before the re-read starts.
    broker_of = staticmethod(apache_kafka)

    def test_newcomerGetsNoOldEventAfterKill(self):
        """
        The group commits no offset (so the partition is re-read from its
        start after the kill) and membership is dynamic (the partition waits
        for the dead member's session). Events are delivered; the shard is
        killed and restarts; its warm-up is throttled; a client subscribes
        before the group gives the partition back and while the warm-up
        runs; then new events are produced: that client gets exactly the
        new events, none of the old ones the re-read brought back.
        """
        node = self.node(**{"kafka.static_membership": False, "history.warmup_timeout": 30,
                            "kafka.session_timeout_ms": 12000,
                            "kafka.max_poll_interval_ms": 12000,
                            "kafka.consumer_config": {"enable.auto.commit": False,
                                                      "statistics.interval.ms": 500,
                                                      "fetch.wait.max.ms": 10}})
        wait_for(lambda: node.assigned()[0], 60, 0.2, "the partition assigned")
        before = self.connect(node)
        before.subscribe("odin.token.*.*")
        self.produce(6)
        old = sorted(e["data"]["seq"] for e in before.collect(6, timeout=30))
        self.assertEqual(old, list(range(6)))
        warmup = f"odinws-{node.node_id}-warmup"
        set_consumer_byte_rate(self.broker.bootstrap, warmup, 1.0)
        self.addCleanup(set_consumer_byte_rate, self.broker.bootstrap, warmup, None)
        [shard] = node.health()[1]["shards"]
        os.kill(shard["pid"], signal.SIGKILL)

        def restarted():
            [s] = node.health()[1]["shards"]
            return s if s["alive"] and s["pid"] != shard["pid"] and s["kafka"] else None
        wait_for(restarted, 30, 0.1, "the shard restarted")
        newcomer = self.connect(node)
        newcomer.subscribe("odin.token.*.*")
        now = restarted()
        # The preconditions: the restarted shard has no partition yet (the
        # dead member's session runs) and its warm-up still reads.
        self.assertEqual((now["kafka"]["assigned"], now["warmup"]["state"]), ([], "running"), now)
        wait_for(lambda: node.assigned()[0], 60, 0.2, "the partition back on the shard")
        self.produce(4)
        got = [e["data"]["seq"] for e in newcomer.collect(4, timeout=90)]
        self.assertEqual(sorted(got), list(range(6, 10)), f"the newcomer's events: {newcomer.events}")
