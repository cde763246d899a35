"""
A broker that stops answering for a few seconds (SIGSTOP, then SIGCONT: a
GC pause, a frozen VM) under a running node: Apache Kafka of the test's own,
the real C{twistd odinws} parent with two shards, real C{websockets} clients.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time

from tests.helpers.broker import KafkaBroker, fast_kafka
from tests.helpers.node import Client, Node, http_get, wait_for
from tests.integration.test_kafka_faults import OwnBrokerCase

#: Pauses in one test: each has about even odds of timing out librdkafka's
#: session when the heartbeat is a third of it (the bug), none at a twentieth.
PAUSES = 3
#: Seconds each pause lasts: shorter than the 6 s session by more than a
#: twentieth of it (the heartbeat), and by less than a third of it.
PAUSE = 5.0
#: Events produced per second throughout (the pauses included: they wait in
#: the producer and reach the broker when it answers again).
RATE = 25
KEYS = 5


class BrokerPausedTests(OwnBrokerCase):
    """
    Apache Kafka paused for 5 s, three times, under a node of two shards
    (static members, the shipped kafka.static_membership) with the tests'
    6 s session. Measured with the heartbeat at a third of the session, a
    pause longer than two thirds of it timed out librdkafka's own session
    timer (SESSTMOUT) whenever the last heartbeat answer was old enough:
    both shards gave up their partitions and rejoined (without static
    membership the broker then held the join for the old members: 10 s of
    nothing after an 8 s pause at the shipped 10 s session).
    """

    prefix = "paused"
    partitions = 2
    broker_class = KafkaBroker

    def setUp(self):
        super().setUp()
        settings = {**fast_kafka("kafka"), "kafka.topics": {self.topic: "trade"},
                    "log.level": "info"}
        self.node = Node(self.workdir, self.broker.bootstrap, shards=2, settings=settings)
        self.addCleanup(self.node.stop)
        self.node.start()
        self.node.wait_spread()
        self.seq = 0

    def produce_for(self, seconds: float) -> None:
        """Produce RATE events a second for C{seconds}, each with the next seq."""
        end = time.monotonic() + seconds

        def produced_until_end() -> bool:
            token = f"P{self.seq % KEYS}"
            self.broker.produce(self.topic, token.encode(),
                                json.dumps({"seq": self.seq}).encode())
            self.seq += 1
            return time.monotonic() >= end
        wait_for(produced_until_end, seconds + 10, 1.0 / RATE, "the events of this period")

    def watch_health(self, stop: threading.Event, dropped: list, told: list) -> None:
        """
        Record every /health sample in which some shard holds no partition
        (C{dropped}), and the times of those saying the broker does not
        answer (C{told}: degraded kafka_disconnected).
        """
        while not stop.is_set():
            try:
                _, _, body = http_get(self.node.port, "/health", timeout=2)
                doc = json.loads(body)
            except (OSError, ValueError):
                continue
            held = [(s.get("kafka") or {}).get("assigned") for s in doc["shards"]]
            if not all(held):
                dropped.append(held)
            if "kafka_disconnected" in doc["degraded"]:
                told.append(time.monotonic())
            stop.wait(0.05)

    def test_pausesLoseNothingAndKeepTheGroup(self):
        """
        Through three 5 s pauses of the broker (each shorter than the 6 s
        session) every event produced before, during and after them reaches
        a client on each shard exactly once and in order per channel, and the
        group is never disturbed: no shard's session times out (librdkafka's
        SESSTMOUT), no shard loses its partitions
        (odinws_kafka_assignments_lost_total stays 0, no /health sample with
        a shard holding none), so events flow again as soon as the broker
        answers rather than after a rejoin; and /health says during each
        pause that Kafka does not answer (degraded kafka_disconnected: a
        broker silent for 3 s with requests waiting), where it used to
        wait a session timeout.
        """
        clients = []
        for _ in range(2):
            c = Client(self.node.url())
            self.addCleanup(c.close)
            c.subscribe("odin.token.*.trade")
            clients.append(c)
        stop, dropped, told = threading.Event(), [], []
        watcher = threading.Thread(target=self.watch_health, args=(stop, dropped, told),
                                   daemon=True)
        watcher.start()
        self.addCleanup(watcher.join, 5)
        self.addCleanup(stop.set)
        pid = self.broker.pid
        pauses = []
        for _ in range(PAUSES):
            self.produce_for(1.5)
            os.kill(pid, signal.SIGSTOP)
            try:
                began = time.monotonic()
                self.produce_for(PAUSE)
            finally:
                os.kill(pid, signal.SIGCONT)
            pauses.append((began, time.monotonic()))
        self.produce_for(1.5)
        self.broker.flush(30)
        for c in clients:
            c.collect(self.seq, timeout=30)
        stop.set()
        for c in clients:
            per_channel: dict[str, list[int]] = {}
            for e in c.events:
                per_channel.setdefault(e["channel"], []).append(e["data"]["seq"])
            got = sorted(seq for seqs in per_channel.values() for seq in seqs)
            self.assertEqual(got, list(range(self.seq)), "lost or duplicated events")
            for channel, seqs in per_channel.items():
                self.assertEqual(seqs, sorted(seqs), f"{channel} out of order")
        timed_out = [line for line in self.node.tail(2_000_000).splitlines()
                     if "SESSTMOUT" in line or "lost its" in line]
        self.assertEqual(timed_out, [])
        _, _, metrics = http_get(self.node.port, "/metrics")
        lost = [line for line in metrics.decode().splitlines()
                if line.startswith("odinws_kafka_assignments_lost_total")]
        self.assertEqual(sum(float(line.rsplit(" ", 1)[1]) for line in lost), 0, lost)
        self.assertEqual(dropped, [])
        # /health told each pause while it lasted (not only after a session).
        self.assertEqual([any(began <= t <= ended + 0.5 for t in told) for began, ended in pauses],
                         [True] * PAUSES, f"kafka_disconnected at {told}, pauses {pauses}")
