"""
A node of one shard whose shard is killed (kill -9) and whose consumer
re-reads its partition from an old commit (L{odin_ws.shard.delivery.warmgate}),
against Apache Kafka, the real C{twistd odinws} parent and shard processes
and C{websockets} clients: a client connected after the restart must not
get the events the node delivered before as live ones.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable

from tests.helpers.broker import KafkaBroker, apache_kafka
from tests.helpers.node import Node, node_metric, wait_for
from tests.helpers.quota import set_consumer_byte_rate
from tests.helpers.topics import TopicNodeCase


class KilledShardCase(TopicNodeCase):
    """
    One shard, one partition, no commit (re-read from its start), dynamic
    membership (a killed member's partition waits for its session).
    """

    shards = 1
    partitions = 1
    tokens = 2

    def one_shard_node(self, **extra: object) -> Node:
        return self.node(**{"kafka.static_membership": False, "history.warmup_timeout": 30,
                            "kafka.session_timeout_ms": 12000,
                            "kafka.max_poll_interval_ms": 12000,
                            "kafka.consumer_config": {"enable.auto.commit": False,
                                                      "statistics.interval.ms": 500,
                                                      "fetch.wait.max.ms": 10},
                            **extra})

    def kill(self, node: Node) -> Callable[[], dict | None]:
        """Kill the shard; what tells its restarted process (None until it is there)."""
        [shard] = node.health()[1]["shards"]
        os.kill(shard["pid"], signal.SIGKILL)

        def restarted() -> dict | None:
            [s] = node.health()[1]["shards"]
            return s if s["alive"] and s["pid"] != shard["pid"] and s["kafka"] else None
        return restarted

    def warm_up_ended(self, restarted: Callable[[], dict | None]) -> dict:
        """Wait until the restarted shard's warm-up no longer runs; its status then."""
        def ended() -> dict | None:
            s = restarted()
            return s if s is not None and s["warmup"]["state"] != "running" else None
        return wait_for(ended, 60, 0.1, "the warm-up's end")


class OneShardRereadTests(KilledShardCase):
    """
    One shard, one partition: no hub marks, ever. The warm-up that runs at
    the restart is slowed (a client quota on its client id), so the group
    consumer's re-read comes while it still runs, as it does whenever the
    past to read back is large or the broker slow.
    """

    prefix = "gate"
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
        node = self.one_shard_node()
        wait_for(lambda: node.assigned()[0], 60, 0.2, "the partition assigned")
        before = self.connect(node)
        before.subscribe("odin.token.*.*")
        self.produce(6)
        old = sorted(e["data"]["seq"] for e in before.collect(6, timeout=30))
        self.assertEqual(old, list(range(6)))
        warmup = f"odinws-{node.node_id}-warmup"
        set_consumer_byte_rate(self.broker.bootstrap, warmup, 1.0)
        self.addCleanup(set_consumer_byte_rate, self.broker.bootstrap, warmup, None)
        restarted = self.kill(node)
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


class LatePartitionTests(KilledShardCase):
    """
    One shard, one partition, re-read from its start after a kill -9, which
    reaches the restarted shard only after its warm-up ended (the dead
    member's session holds it: dynamic membership), and for which that
    warm-up read no event back: the warm gate's late case.
    """

    prefix = "late"
    broker_of = staticmethod(apache_kafka)

    def produce_at(self, count: int, age: float) -> None:
        """C{count} events stamped C{age} seconds ago."""
        stamp = int((time.time() - age) * 1000)
        for _ in range(count):
            self.broker.produce(self.topic, b"T%d" % (self.seq % self.tokens),
                                json.dumps({"seq": self.seq}).encode(), timestamp_ms=stamp,
                                partition=0)
            self.produced.setdefault(0, []).append(self.seq)
            self.seq += 1
        self.broker.flush()

    def reread_after_kill(self, age: float, **settings: object) -> list[int]:
        """
        Six events C{age} seconds old delivered, the shard killed; once its
        warm-up ended and the partition is back, four new events: the seqs
        a client connected after the restart gets (its first four).
        """
        node = self.one_shard_node(**settings)
        wait_for(lambda: node.assigned()[0], 60, 0.2, "the partition assigned")
        before = self.connect(node)
        before.subscribe("odin.token.*.*")
        self.produce_at(6, age)
        old = sorted(e["data"]["seq"] for e in before.collect(6, timeout=30))
        self.assertEqual(old, list(range(6)))
        restarted = self.kill(node)
        wait_for(restarted, 30, 0.1, "the shard restarted")
        newcomer = self.connect(node)
        newcomer.subscribe("odin.token.*.*")
        warmed = self.warm_up_ended(restarted)
        # The precondition: the warm-up ended, with no event read back,
        # before the group gave the partition back (the dead member's session).
        self.assertEqual((warmed["kafka"]["assigned"], warmed["warmup"]["events"]),
                         ([], 0), warmed)
        wait_for(lambda: node.assigned()[0], 60, 0.2, "the partition back on the shard")
        self.produce(4)
        return [e["data"]["seq"] for e in newcomer.collect(4, timeout=90)]

    def test_newcomerGetsNoOldEventOfAPartitionWithNothingToWarm(self):
        """
        The events are older than history.max_age (within
        outbound.max_event_age): the warm-up reads none back, but learns
        where the partition is, so its re-read is not live: the client gets
        only the events produced after the restart (before, it got the six
        old ones again as live events).
        """
        got = self.reread_after_kill(12, **{"history.max_age": 5})
        self.assertEqual(sorted(got), list(range(6, 10)), got)


class LateAfterBrokerOutageTests(KilledShardCase):
    """
    One shard, one partition, on a broker of the test's own: the shard is
    killed while the broker is down, so its warm-up ends having read
    nothing; the partition reaches it, re-read from its start (no commit),
    only once the broker is back: the warm gate's late case, read back by
    the partition's own warm-up.
    """

    prefix = "lateb"
    own_broker = True
    broker_class = KafkaBroker

    def test_newcomerGetsNoOldEventOfALatePartition(self):
        """
        Six events delivered; broker down; shard killed; its warm-up ends
        with nothing; broker up; once the partition is back, four new
        events: a client connected after the restart gets those four only
        (before, the six old ones first, as live events), and the six are
        in the restarted shard's history (a recovery from the first gets
        the other five).
        """
        node = self.one_shard_node(**{"history.warmup_timeout": 3})
        wait_for(lambda: node.assigned()[0], 60, 0.2, "the partition assigned")
        before = self.connect(node)
        before.subscribe("odin.token.*.*")
        self.produce(6)
        old = before.collect(6, timeout=30)
        self.assertEqual(sorted(e["data"]["seq"] for e in old), list(range(6)))
        self.broker.down()
        restarted = self.kill(node)
        warmed = self.warm_up_ended(restarted)
        self.assertEqual((warmed["kafka"]["assigned"], warmed["warmup"]["partitions"]),
                         ([], 0), warmed)
        newcomer = self.connect(node)
        newcomer.subscribe("odin.token.*.*")
        self.broker.up()
        wait_for(lambda: node.assigned()[0], 90, 0.2, "the partition back on the shard")
        # /health tells the partition's own warm-up (from the shard's next
        # report): it ran, read the six back, and nothing waits any more.
        # Waited for before the four new events, which it would otherwise
        # read too when they reach the partition before its end is taken.
        def reported() -> dict | None:
            body = node.health()[1]
            return body if body["shards"][0]["warmup"]["late"]["runs"] else None
        body = wait_for(reported, 30, 0.1, "the late warm-up's end reported")
        self.produce(4)
        got = [e["data"]["seq"] for e in newcomer.collect(4, timeout=90)]
        self.assertEqual(sorted(got), list(range(6, 10)), f"the newcomer's events: {newcomer.events}")
        [late] = [s["warmup"]["late"] for s in body["shards"]]
        self.assertEqual((late["runs"], late["reading"], late["waiting"], body["warming_partitions"]),
                         (1, [], [], []), body)
        self.assertEqual((late["last"]["state"], late["last"]["events"], late["last"]["partitions"]),
                         ("done", 6, [f"{self.topic}[0]"]), late)
        self.assertNotIn("warming_partitions", body["degraded"])
        self.assertEqual(node_metric(node, "odinws_history_late_warmups_total", 'result="done"'), 1)
        first = min(old, key=lambda e: e["data"]["seq"])["pos"]
        ack = self.connect(node).request({"type": "subscribe", "channels": ["odin.token.*.*"],
                                          "since": [first]})
        self.assertEqual((ack["recovered"], ack["replayed"]), (True, 9), ack)
