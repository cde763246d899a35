"""
Apache Kafka in KRaft mode on loopback, for tests and benchmarks: one node
or several, each a combined broker and controller (one JVM each), from the
jars of L{odinws_tools.kafka.jars}. Blocking calls, meant for a main
program or a test's setUp.

Settings differ from Kafka's shipped defaults only where a test broker
needs it: replication of the internal topics no higher than the node count,
fewer partitions for them (created on the first group join / transaction,
50 each by default), no initial rebalance delay (a group of one would wait
3 s for more members), a small heap and a JIT that favours start-up. The
group session bounds (C{group.min.session.timeout.ms} 6 s,
C{group.max.session.timeout.ms} 30 min), segment sizes, retention and the
consumer group protocol are Kafka's own.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable
from typing import Any

from confluent_kafka.admin import AdminClient

from odin_ws.common.logs import silenced
from odinws_tools.embedded_broker import create_topics, die_with_parent, free_port, stop_process
from odinws_tools.kafka.jars import ensure_jars, kafka_version

START_TIMEOUT = 90.0
#: A clean shutdown of a combined node takes about a second; a node whose
#: quorum is gone (the last ones of a cluster) can wait far longer.
TERM_WAIT = 15.0
JVM_OPTIONS = (
    "-Xms64m", "-Xmx384m", "-XX:+UseSerialGC",
    # C1 only: a fraction of the JIT's CPU at start-up on a shared 2-core machine.
    "-XX:TieredStopAtLevel=1", "-XX:+ExitOnOutOfMemoryError", "-Djava.awt.headless=true",
    "-Dorg.slf4j.simpleLogger.showDateTime=true",
    "-Dorg.slf4j.simpleLogger.dateTimeFormat=yyyy-MM-dd'T'HH:mm:ss.SSS",
)
#: A topic of the readiness check (produce, then fetch it back).
READY_TOPIC = "__odinws_ready"

_quiet = silenced("odinws_tools.kafka.librdkafka")


class KafkaNode:
    """One combined broker+controller JVM of a L{KafkaCluster}."""

    def __init__(self, node_id: int, port: int, controller_port: int, data_dir: str):
        self.node_id = node_id
        self.port = port
        self.controller_port = controller_port
        self.data_dir = data_dir
        self.proc: subprocess.Popen | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def config_path(self) -> str:
        return os.path.join(self.data_dir, "server.properties")

    def properties(self, voters: str, replication: int) -> dict[str, object]:
        return {
            "process.roles": "broker,controller",
            "node.id": self.node_id,
            "controller.quorum.voters": voters,
            "listeners": f"PLAINTEXT://127.0.0.1:{self.port},"
                         f"CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": os.path.join(self.data_dir, "log"),
            "offsets.topic.replication.factor": replication,
            "offsets.topic.num.partitions": 6,
            "transaction.state.log.replication.factor": replication,
            "transaction.state.log.min.isr": min(replication, 2),
            "transaction.state.log.num.partitions": 6,
            "share.coordinator.state.topic.replication.factor": replication,
            "share.coordinator.state.topic.min.isr": min(replication, 2),
            "share.coordinator.state.topic.num.partitions": 6,
            "group.initial.rebalance.delay.ms": 0,
        }

    def write_config(self, voters: str, replication: int) -> None:
        os.makedirs(self.data_dir, exist_ok=True)
        with open(self.config_path, "w", encoding="utf-8") as f:
            for key, value in self.properties(voters, replication).items():
                f.write(f"{key}={value}\n")

    @property
    def formatted(self) -> bool:
        return os.path.exists(os.path.join(self.data_dir, "log", "meta.properties"))

    def format_command(self, classpath: str, cluster_id: str) -> list[str]:
        return ["java", *JVM_OPTIONS, "-cp", classpath, "kafka.tools.StorageTool", "format",
                "--ignore-formatted", f"--cluster-id={cluster_id}", "-c", self.config_path]

    def spawn(self, classpath: str) -> None:
        on_main = threading.current_thread() is threading.main_thread()
        with open(os.path.join(self.data_dir, "kafka.log"), "ab") as log:
            self.proc = subprocess.Popen(
                ["java", *JVM_OPTIONS, "-cp", classpath, "kafka.Kafka", self.config_path],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                # Its own process group: a Ctrl-C in the terminal reaches only
                # the program that started it, which stops the nodes in order.
                process_group=0,
                preexec_fn=die_with_parent if on_main else None)

    def terminate(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()

    def wait_stopped(self, wait: float) -> None:
        proc, self.proc = self.proc, None
        stop_process(proc, wait)


class KafkaCluster:
    """
    Apache Kafka on 127.0.0.1: C{brokers} combined broker+controller nodes,
    listening on C{port}, C{port + 1}, ... (C{port} 0: free ports).

    @param directory: where each node's data, config and log go
        (C{node-<id>/}); default a temporary folder removed by L{stop}. A
        folder that already holds formatted nodes is started as it is
        (data kept).
    """

    def __init__(self, directory: str | None = None, brokers: int = 1):
        if brokers < 1:
            raise ValueError("brokers must be at least 1")
        self.brokers = brokers
        self.version = kafka_version()
        self._own_dir = directory is None
        self.directory = directory or tempfile.mkdtemp(prefix="odinws-kafka-")
        self.nodes: list[KafkaNode] = []
        self.bootstrap = ""
        self.admin: AdminClient | None = None
        self._classpath = ""

    @property
    def port(self) -> int:
        return self.nodes[0].port if self.nodes else 0

    @property
    def pid(self) -> int | None:
        """The first node's JVM (the only one of a single-node cluster)."""
        return self.nodes[0].pid if self.nodes else None

    @property
    def replication(self) -> int:
        """Replication factor of new topics: every node, at most 3."""
        return min(self.brokers, 3)

    def start(self, port: int = 0) -> None:
        """
        Start every node and wait until the cluster accepts a produced record
        and gives it back to a fetch.

        @raise RuntimeError: it did not (the message names the logs).
        """
        self._classpath = os.path.join(ensure_jars(), "*")
        if not self.nodes:
            self.nodes = self._plan(port)
        voters = ",".join(f"{n.node_id}@127.0.0.1:{n.controller_port}" for n in self.nodes)
        for node in self.nodes:
            node.write_config(voters, self.replication)
        self._format()
        for node in self.nodes:
            node.spawn(self._classpath)
        self.bootstrap = ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)
        try:
            self._wait_ready()
        except BaseException:
            self.stop_nodes()
            raise

    def _plan(self, port: int) -> list[KafkaNode]:
        nodes = []
        for i in range(self.brokers):
            nodes.append(KafkaNode(i + 1, port + i if port else free_port(), free_port(),
                                   os.path.join(self.directory, f"node-{i + 1}")))
        return nodes

    def _format(self) -> None:
        """Format the storage of new nodes (in parallel: a JVM start each)."""
        todo = [n for n in self.nodes if not n.formatted]
        if not todo:
            return
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        procs = [(n, subprocess.Popen(n.format_command(self._classpath, cluster_id),
                                      stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT))
                 for n in todo]
        failures = []
        for node, proc in procs:
            output, _ = proc.communicate(timeout=START_TIMEOUT)
            if proc.returncode != 0:
                failures.append(f"node {node.node_id}: {output.decode('utf-8', 'replace')[-2000:]}")
        if failures:
            raise RuntimeError("kafka-storage format failed: " + "\n".join(failures))

    def _wait_ready(self) -> None:
        from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
        common: dict[str, Any] = {"bootstrap.servers": self.bootstrap, "logger": _quiet,
                  "socket.connection.setup.timeout.ms": 1000, "reconnect.backoff.max.ms": 200}
        admin = AdminClient(common)
        deadline = time.monotonic() + START_TIMEOUT

        def alive() -> None:
            for node in self.nodes:
                if node.proc is None or node.proc.poll() is not None:
                    code = node.proc.returncode if node.proc is not None else None
                    raise RuntimeError(f"Kafka node {node.node_id} exited with code {code} "
                                       f"(log: {node.data_dir}/kafka.log)")

        def until(what: str, done) -> None:
            while True:
                alive()
                try:
                    if done():
                        return
                except KafkaException:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"Kafka: {what} not within {START_TIMEOUT:g}s "
                                       f"(logs: {self.directory}/node-*/kafka.log)")
                time.sleep(0.1)

        until("all brokers in metadata",
              lambda: len(admin.list_topics(timeout=1.0).brokers) == self.brokers)
        create_topics(admin, [READY_TOPIC], 1, replication=self.replication,
                      timeout=START_TIMEOUT)
        marker = uuid.uuid4().hex.encode()
        producer = Producer({**common, "acks": "all", "linger.ms": 0})

        def acknowledged() -> bool:
            producer.produce(READY_TOPIC, marker)
            return producer.flush(5.0) == 0
        until("a produced record acknowledged", acknowledged)
        consumer = Consumer({**common, "group.id": "odinws-ready", "enable.auto.commit": False})
        try:
            consumer.assign([TopicPartition(READY_TOPIC, 0, 0)])

            def fetched() -> bool:
                msg = consumer.poll(1.0)
                return msg is not None and msg.error() is None and msg.value() == marker
            until("the record fetched back", fetched)
        finally:
            consumer.close()
        self.admin = admin

    def create_topics(self, names: Iterable[str], partitions: int = 1) -> None:
        """Create topics (existing ones are fine), replicated on every node (at most 3)."""
        create_topics(self.admin, names, partitions, replication=self.replication)

    def stop(self) -> None:
        """Stop every node (SIGTERM, SIGKILL after a bounded wait); remove a temporary folder."""
        self.stop_nodes()
        if self._own_dir:
            shutil.rmtree(self.directory, ignore_errors=True)

    def stop_nodes(self) -> None:
        """Stop every node, keeping the data: L{start} starts them again on the same ports."""
        self.admin = None
        for node in self.nodes:
            node.terminate()
        for node in self.nodes:
            node.wait_stopped(TERM_WAIT)

    def restart(self) -> None:
        """Stop every node and start them again on the same ports; data is kept."""
        self.stop_nodes()
        self.start()
