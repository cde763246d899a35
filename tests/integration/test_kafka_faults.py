"""
Kafka faults under a running node: the real broker (one of the test's
own, so it can be replaced or frozen), the real C{twistd odinws} parent with real
shard processes, and real C{websockets} clients.
"""

from __future__ import annotations

import json
import os
import signal
import uuid

from confluent_kafka import Consumer
from twisted.trial import unittest

from odin_ws.common.logs import silenced
from tests.helpers import FAST_KAFKA
from tests.helpers.broker import KafkaBroker, fast_kafka, new_broker
from tests.helpers.node import Client, Node, http_get, metric_lines, wait_for

_quiet = silenced("tests.intruder.librdkafka")

#: Records before the broker is replaced: the de-duplication marks end up
#: far above anything produced afterwards (offsets restart at 0).
BEFORE = 1200


def health_summary(doc: dict) -> dict:
    """Of a /health document: the status, and each shard's partitions and those held by none."""
    return {"status": doc["status"], "degraded": doc["degraded"],
            "unassigned": doc.get("unassigned_partitions"),
            "stalled": doc.get("stalled_partitions"),
            "assigned": [(s.get("kafka") or {}).get("assigned") for s in doc["shards"]]}


class OwnBrokerCase(unittest.TestCase):
    """A broker of the test's own (the test replaces or freezes it) with a fresh topic."""

    partitions = 1
    prefix = "faults"
    #: The broker's class, whatever this run's broker (None: this run's kind).
    broker_class: type | None = None

    def setUp(self):
        self.workdir = os.path.abspath(self.mktemp())
        os.makedirs(self.workdir)
        self.broker = (self.broker_class(self.workdir) if self.broker_class
                       else new_broker(self.workdir))
        self.broker.start()
        self.addCleanup(self.broker.stop)
        self.topic = f"{self.prefix}-{uuid.uuid4().hex[:8]}"
        self.broker.create_topics([self.topic], partitions=self.partitions)


class BrokerReplacedCase(OwnBrokerCase):
    """
    The broker is replaced under a running node by a new one on the same
    address, with nothing in it (topics, offsets, consumer groups and the
    cluster id are new), and the topic is created again: its offsets
    restart at 0. Apache Kafka, as in production (the topic recreated on a
    kept broker is test_recovery.TopicRecreatedTests).
    """

    shards = 2
    partitions = 2
    broker_class = KafkaBroker
    #: kafka.start_offset (None: the tests' earliest).
    start_offset: str | None = None
    #: kafka.static_membership (None: the shipped default, on).
    static_membership: bool | None = None

    def setUp(self):
        super().setUp()
        settings = fast_kafka(self.broker.kind)
        if self.start_offset is not None:
            settings["kafka.start_offset"] = self.start_offset
        if self.static_membership is not None:
            settings["kafka.static_membership"] = self.static_membership
        settings["kafka.consumer_config"] = {
            **settings["kafka.consumer_config"],
            # See the recreated topic within a poll or two, not 5 minutes.
            "topic.metadata.refresh.interval.ms": 500}
        # The history warm-up stays on: events produced while it runs must
        # reach clients live (they did not at 7e3dcad: up to all 1200 lost).
        settings.update({"kafka.topics": {self.topic: "trade"}, "kafka.retry_backoff_max": 0.5,
                         "log.level": "info"})
        self.node = Node(self.workdir, self.broker.bootstrap, shards=self.shards,
                         settings=settings)
        self.addCleanup(self.node.stop)
        self.node.start()

    def client(self) -> Client:
        c = Client(self.node.url())
        self.addCleanup(c.close)
        c.subscribe("odin.token.*.trade")
        return c

    def produce(self, token: str, seq) -> None:
        self.broker.produce(self.topic, token.encode(), json.dumps({"seq": seq}).encode())

    @staticmethod
    def drain(c: Client) -> list[str]:
        """Receive what has arrived (briefly waiting); the "after-" events so far."""
        try:
            c.collect(len(c.events) + 1, timeout=0.2)
        except AssertionError:
            pass
        return [e["data"]["seq"] for e in c.events if str(e["data"]["seq"]).startswith("after-")]

    def diagnosis(self, clients: list[Client]) -> str:
        """What a failure message needs: /health, the Kafka metrics, the node's last Kafka lines."""
        series = metric_lines(self.node, "odinws_kafka_consumer_lag", "odinws_kafka_records_total",
                              "odinws_kafka_partitions_stalled", "odinws_offset_resets",
                              "odinws_events_duplicate", "odinws_hub_",
                              "odinws_kafka_consumer_replacements")
        kafka_log = [line for line in self.node.tail(400_000).splitlines() if "Kafka" in line]
        doc = self.node.health()[1]
        return (f"/health: {health_summary(doc)}; "
                f"the shards' Kafka: {[s.get('kafka') for s in doc['shards']]}; "
                f"clients got {[len(c.events) for c in clients]}; "
                f"metrics: {series}; log: " + "\n".join(kafka_log[-20:]))

    def every_one_arrives(self, clients: list[Client], count: int, timeout: float) -> None:
        """
        Produce C{count} events now; each client gets every one exactly once
        (else the failure says which are missing, with /health and the
        node's last Kafka lines).
        """
        after = [(f"A{i % 20}", f"after-{i}") for i in range(count)]
        for token, seq in after:
            self.produce(token, seq)
        self.broker.flush()
        expected = sorted(seq for _, seq in after)
        for c in clients:
            try:
                wait_for(lambda c=c: len(self.drain(c)) >= count, timeout=timeout,
                         what="the events produced after the replacement")
            except AssertionError:
                pass  # the comparison below says which are missing
            got = sorted(self.drain(c))
            self.assertEqual(got, expected, None if got == expected else
                             f"{len(set(expected) - set(got))} missing; {self.diagnosis([c])}")

    def replace_topic(self) -> None:
        """A new broker on the same address; the topic created again on it."""
        self.broker.replace()
        self.broker.create_topics([self.topic], partitions=self.partitions)


class BrokerReplacedTests(BrokerReplacedCase):
    """
    The topic starts over on a new broker under a running node (static
    members, reading from the earliest offset). A shard whose consumer kept
    a partition and read none of it again (SESSTMOUT on the new broker)
    lost about 90 of 150 events with /health "ok" before the progress check
    (shard/kafka/progress.py) rejoined and then replaced its consumer.
    """

    def test_everyEventAfterReplacementArrives(self):
        """
        After the topic starts over (recreated, its offsets restart at 0,
        far below the de-duplication marks of the shards and the hub), every event
        produced once odinws has recovered reaches the clients of both
        shards (relayed ones included) — none is dropped as a duplicate —
        and the reset of the marks is counted and audited.
        """
        # Two clients: placement puts one on each shard, so events of the
        # partition the other shard consumes reach each through the hub.
        clients = [self.client(), self.client()]
        for i in range(BEFORE):
            self.produce(f"K{i % 20}", i)
        self.broker.flush()
        for c in clients:
            c.collect(BEFORE, timeout=60)

        self.replace_topic()
        for c in clients:
            c.events.clear()

        # Recovered = a probe produced now into each partition reaches both
        # clients. Far fewer probes than BEFORE fit in the deadline, so with
        # marks that never go back (the bug) no probe would ever arrive. The
        # deadline holds the cure of a partition held but not read (progress
        # check: a rejoin after kafka.progress_grace, a new consumer a grace
        # later), which some runs need on one partition and not the other.
        probes = iter(range(10_000))

        def probe_arrived() -> bool:
            n = next(probes)
            for p in range(self.partitions):
                self.broker.produce(self.topic, b"PROBE",
                                    json.dumps({"seq": f"probe-{n}-{p}"}).encode(), partition=p)
            self.broker.flush()
            for c in clients:
                try:
                    while True:   # all that has arrived
                        c.collect(len(c.events) + 1, timeout=0.3)
                except AssertionError:
                    pass
            return all({str(e["data"]["seq"]).rsplit("-", 1)[1] for e in c.events
                        if str(e["data"]["seq"]).startswith("probe-")}
                       == {str(p) for p in range(self.partitions)} for c in clients)
        try:
            wait_for(probe_arrived, timeout=120, interval=0.2,
                     what="a probe event of each partition after the replacement")
        except AssertionError as e:
            raise AssertionError(f"{e}; {self.diagnosis(clients)}") from None

        for c in clients:
            c.events.clear()
        self.every_one_arrives(clients, 200, timeout=30)

        def resets() -> float:
            _, _, body = http_get(self.node.port, "/metrics")
            return sum(float(line.rsplit(" ", 1)[1]) for line in body.decode().splitlines()
                       if line.startswith("odinws_offset_resets_total{"))
        self.assertGreater(resets(), 0)
        self.assertIn("de-duplication marks reset", self.node.tail(200_000))


class BrokerReplacedAtOnceTests(BrokerReplacedCase):
    # The shipped default: a new group starts at the partitions' ends.
    start_offset = "latest"
    # With static members a shard whose session timed out while the broker
    # was away never rejoined the new broker's group (SESSTMOUT, then no
    # assignment for 90 s: seen in 2 of 2 runs): the static-membership
    # stall of issue 21, not this test's subject.
    static_membership = False

    def test_eventsProducedAtOnceAfterReplacement(self):
        """
        Events produced the moment the new broker has the topic (before
        odinws's consumers have re-formed their group and been assigned)
        all reach the clients of both shards: a new topic incarnation is
        read from its beginning, not from "latest" (the shipped
        start_offset). The issue's run lost 48 of 149 that way, while
        /health said ok.
        """
        self.node.wait_ready(timeout=90)
        clients = [self.client(), self.client()]
        for i in range(20):
            self.produce(f"K{i % 20}", i)
        self.broker.flush()
        for c in clients:
            c.collect(20, timeout=60)
        self.replace_topic()
        for c in clients:
            c.events.clear()
        self.every_one_arrives(clients, 150, timeout=90)


class HungBrokerTests(OwnBrokerCase):
    """A broker that accepts connections but answers nothing (SIGSTOP)."""

    prefix = "hung"

    def setUp(self):
        super().setUp()
        self.settings = dict(FAST_KAFKA)
        self.settings["kafka.topics"] = {self.topic: "trade"}

    def start(self, **settings) -> Node:
        node = Node(self.workdir, self.broker.bootstrap, shards=1,
                    settings={**self.settings, **settings})
        self.addCleanup(node.stop)
        node.start()
        return node

    def freeze(self) -> None:
        os.kill(self.broker.pid, signal.SIGSTOP)
        self.addCleanup(os.kill, self.broker.pid, signal.SIGCONT)

    def test_reportedNotConnected(self):
        """
        With the broker frozen (connections stay open, nothing is answered)
        the shard's Kafka status turns to unresponsive and not connected,
        which /health reads (librdkafka alone keeps the broker "UP").
        """
        node = self.start()

        def kafka() -> dict:
            return node.health()[1]["shards"][0]["kafka"]

        def disconnected() -> dict | None:
            status = kafka()
            return None if status["connected"] else status

        self.assertTrue(kafka()["connected"])
        self.freeze()
        status = wait_for(disconnected, timeout=30, what="Kafka reported not connected")
        self.assertEqual(status["state"], "unresponsive")
        self.assertIn("has not answered", status["last_error"])

    def test_stopIsBounded(self):
        """
        SIGTERM while the broker is frozen and the consumer still a group
        member stops the node without waiting for the consumer's close
        (which blocks for minutes on its LeaveGroup and commit) and without
        the supervisor having to SIGKILL the shard.
        """
        # A long session: the consumer is surely still a member at SIGTERM.
        # A dynamic member: a static one sends no LeaveGroup, and its close
        # did not block on the frozen Apache Kafka (measured: stopped in 2 s).
        node = self.start(**{"kafka.session_timeout_ms": 10000,
                             "kafka.max_poll_interval_ms": 10000,
                             "kafka.static_membership": False})
        self.freeze()
        node.stop()
        log = node.tail(200_000)
        self.assertIn("Kafka consumer not closed within", log)
        self.assertNotIn("sending SIGKILL", log)


class FencedAfterOutageTests(OwnBrokerCase):
    """
    Static members (kafka.static_membership) on Apache Kafka through a
    broker outage longer than their session: librdkafka fences such a
    member's consumer for good (fatal FENCED_INSTANCE_ID, measured on
    Kafka 4.4 with confluent-kafka 2.16), and the shard must replace it.
    """

    prefix = "fenced"
    partitions = 2
    broker_class = KafkaBroker

    def start(self) -> Node:
        settings = {**fast_kafka("kafka"), "kafka.topics": {self.topic: "trade"},
                    "kafka.static_membership": True}
        node = Node(self.workdir, self.broker.bootstrap, shards=2, settings=settings)
        self.addCleanup(node.stop)
        return node.start()

    def healthy(self, node: Node) -> dict:
        """Wait until /health is ok with every shard running and assigned."""
        def good():
            body = node.health()[1]
            kafka = [s["kafka"] for s in body["shards"]]
            ok = (body["status"] == "ok" and all(k["state"] == "running" and k["assigned"]
                                               for k in kafka))
            return body if ok else None
        return wait_for(good, 90, 0.2, "every shard running and assigned, /health ok")

    def delivered(self, node: Node) -> None:
        """Events produced now on both partitions all reach a client."""
        client = Client(node.url())
        self.addCleanup(client.close)
        client.subscribe("odin.token.*.trade")
        for i in range(20):
            self.broker.produce(self.topic, f"K{i}".encode(), json.dumps({"seq": i}).encode(),
                                partition=i % 2)
        self.broker.flush()
        got = sorted(e["data"]["seq"] for e in client.collect(20, 60))
        self.assertEqual(got, list(range(20)))

    def test_fencedConsumerReplaced(self):
        """
        A consumer joining with shard 0's instance id fences that shard's
        consumer (librdkafka's fatal state, the same as after a long
        outage); once the intruder is gone the shard has replaced its
        consumer (counted, logged), is running and assigned again, /health
        is ok, and events of both partitions reach a client. Without the
        replacement the shard stays at error with nothing assigned.
        """
        node = self.start()
        node.wait_spread()
        intruder = Consumer({"bootstrap.servers": self.broker.bootstrap,
                             "group.id": f"odinws-{node.node_id}",
                             "group.instance.id": f"{node.node_id}-shard0",
                             "partition.assignment.strategy": "cooperative-sticky",
                             "session.timeout.ms": 6000, "logger": _quiet})
        intruder.subscribe([self.topic])

        def fenced():
            intruder.poll(0.1)
            kafka = node.health()[1]["shards"][0]["kafka"]
            return kafka if kafka["state"] == "error" else None
        kafka = wait_for(fenced, 60, 0.1, "shard 0 fenced by the intruder")
        self.assertIn("fenced", kafka["last_error"])
        intruder.close()
        self.healthy(node)
        self.delivered(node)
        self.assertIn("replacing the Kafka consumer", node.tail(400_000))
        _, _, metrics = http_get(node.port, "/metrics")
        self.assertRegex(metrics.decode(), r"odinws_kafka_consumer_replacements_total\S* [1-9]")

    def test_shardsConsumeAgainAfterLongOutage(self):
        """
        Two static shards, the broker stopped for longer than the session
        (6 s) and started again with its data: every shard is assigned
        again, /health returns to ok with no shard in error, and events
        produced afterwards on both partitions reach a client. Where a
        shard's consumer was fenced, it was replaced (counted in
        odinws_kafka_consumer_replacements_total, logged), not left reading
        nothing.
        """
        node = self.start()
        node.wait_spread()
        self.broker.down()

        def outage(at_least: float):
            def long_enough():
                shards = node.health()[1]["shards"]
                return all((s["kafka"] or {}).get("disconnected_for", 0) >= at_least
                           for s in shards)
            return long_enough
        # Longer than the 6 s session (and the broker's own restart time).
        wait_for(outage(12.0), 60, 0.2, "an outage longer than the session")
        self.broker.up()
        self.healthy(node)
        self.delivered(node)
        log = node.tail(400_000)
        fenced = log.count("Static consumer fenced")
        replaced = log.count("replacing the Kafka consumer")
        print(f"\nlong outage: {fenced} fenced-consumer lines, {replaced} replacements")
        if fenced:
            self.assertGreater(replaced, 0)
