"""
Integration tests for L{odin_ws.shard.kafka.ingest} against the real broker (Tansu, see
L{tests.broker}) with the real reactor.

Consumer settings are the small ones Tansu needs for quick group joins
(session 2 s: a join takes about 1 s), and fast statistics and auto-commit
so status and commits show up within a poll or two.
"""

from __future__ import annotations

import json
import os
import queue
import threading
import uuid

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import Clock
from twisted.internet.threads import deferToThread
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from odin_ws.common import metrics
from odin_ws.common.config import Config, validate
from odin_ws.common.events import Partition
from odin_ws.common.settings import Settings
from odin_ws.shard.history.holes import is_hole
from odin_ws.shard.kafka.consumerloop import STOP_GRACE, ConsumerLoop
from odin_ws.shard.kafka.incarnations import TopicIncarnations
from odin_ws.shard.kafka.ingest import CLOSE_TIMEOUT, KafkaIngest
from odin_ws.shard.kafka.records import RecordMapper
from tests.helpers import sample
from tests.helpers.broker import FAST_KAFKA, free_port, new_broker, shared_broker
from tests.helpers.fakes import FakeKafkaMessage

TIMEOUT = 30.0


def wait_until(condition, what: str, timeout: float = TIMEOUT) -> Deferred:
    """Fire once C{condition()} is true; fail after C{timeout} seconds."""
    deadline = reactor.seconds() + timeout
    d: Deferred = Deferred()

    def check() -> None:
        if condition():
            d.callback(None)
        elif reactor.seconds() > deadline:
            d.errback(AssertionError(f"timed out waiting for {what}"))
        else:
            reactor.callLater(0.05, check)

    check()
    return d


def make_settings(bootstrap: str, topic: str, group: str, **overrides) -> Settings:
    values = {
        "node_id": group, "kafka.group": "test", "kafka.brokers": bootstrap,
        "kafka.topics": {topic: "trade"}, "kafka.start_offset": "earliest",
        "kafka.session_timeout_ms": FAST_KAFKA["kafka.session_timeout_ms"],
        "kafka.max_poll_interval_ms": FAST_KAFKA["kafka.max_poll_interval_ms"],
        "kafka.retry_backoff_max": 0.5,
        "kafka.consumer_config": {"statistics.interval.ms": 500,
                                  "auto.commit.interval.ms": 200,
                                  # Tansu forgets topics when restarted; see
                                  # them again without waiting 5 minutes.
                                  "topic.metadata.refresh.interval.ms": 500},
    }
    values.update(overrides)
    return Settings.from_config(Config(validate(values)))




def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


class Collector:
    """An on_batch that records batches and can hold them (Deferreds not fired)."""

    def __init__(self, hold: bool = False):
        self.batches: list[list] = []
        self.held: list[Deferred] = []
        self.hold = hold

    def __call__(self, events):
        assert threading.current_thread() is threading.main_thread()
        self.batches.append(events)
        if self.hold:
            d: Deferred = Deferred()
            self.held.append(d)
            return d
        return None

    @property
    def events(self) -> list:
        return [e for batch in self.batches for e in batch]


class KafkaIngestTests(TestCase):
    timeout = 120

    def setUp(self) -> None:
        self.broker = shared_broker()
        self.topic = unique("trades")
        self.group = unique("node")
        self.broker.create_topics([self.topic], partitions=2)
        self.logged: list[dict] = []
        observer = self.logged.append
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)

    def start(self, on_batch, bootstrap: str | None = None, **overrides) -> KafkaIngest:
        settings = make_settings(bootstrap or self.broker.bootstrap, self.topic, self.group,
                                 **overrides)
        ingest = KafkaIngest(reactor, settings, 0, RecordMapper.from_settings(settings.kafka),
                             on_batch)
        ingest.startService()
        self.addCleanup(lambda: ingest.stopService() if ingest.running else None)
        return ingest

    def assigned(self, ingest: KafkaIngest, n: int = 2, timeout: float = TIMEOUT) -> Deferred:
        return wait_until(lambda: len(ingest.status()["assigned"]) == n, f"{n} partitions",
                          timeout)

    def kafka_lines(self) -> list[dict]:
        return [e for e in self.logged if e.get("log_namespace") == "odin_ws.shard.kafka.ingest"]

    @inlineCallbacks
    def stop(self, ingest: KafkaIngest):
        thread = ingest._thread
        yield ingest.stopService()
        self.assertFalse(thread.is_alive())
        self.assertEqual(ingest.status()["state"], "stopped")

    @inlineCallbacks
    def test_eventsInOrder(self):
        """
        Records produced to both partitions arrive as the exact events, in
        order per partition, batched in the reactor thread; the assignment
        and a running, connected status are reported; rejected records are
        counted by reason (the keyed one that is not JSON also comes as a hole,
        in its place) and every record by topic; stopping joins the
        consumer thread.
        """
        collector = Collector()
        ingest = self.start(collector)
        yield self.assigned(ingest)
        self.assertEqual(sorted(ingest.status()["assigned"]),
                         [f"{self.topic}[0]", f"{self.topic}[1]"])
        invalid = sample("odinws_kafka_rejected_total", reason="invalid_json")
        no_token = sample("odinws_kafka_rejected_total", reason="no_token")
        for i in range(20):
            partition = i % 2
            self.broker.produce(self.topic, b"T%d" % partition, b'{"n": %d}' % i,
                                timestamp_ms=1700000000000 + i, partition=partition)
        self.broker.produce(self.topic, b"T0", b'"not json', partition=0)
        self.broker.produce(self.topic, None, b"{}", partition=1)
        self.broker.produce(self.topic, b"T0", b'{"n": "last"}', partition=0)
        self.broker.flush()
        yield wait_until(lambda: len(collector.events) == 22, "21 events and a hole")
        # The record that is not JSON, keyed: a hole in its place, its
        # subscribers told (odin_ws.shard.history.holes).
        [hole] = [e for e in collector.events if is_hole(e)]
        self.assertEqual((hole.channel, hole.partition), ("odin.token.T0.trade", 0))
        self.assertEqual([e.offset for e in collector.events if e.partition == 0][-2:],
                         [hole.offset, hole.offset + 1])

        for partition in (0, 1):
            got = [e for e in collector.events if e.partition == partition and not is_hole(e)]
            numbers = list(range(partition, 20, 2))
            expected = [b'{"type":"event","channel":"odin.token.T%d.trade","data":{"n": %d},'
                        b'"ts":%d}' % (partition, n, 1700000000000 + n) for n in numbers]
            if partition == 0:
                expected.append(b'{"type":"event","channel":"odin.token.T0.trade",'
                                b'"data":{"n": "last"},"ts":%d}' % got[-1].ts)
            # Each envelope ends with the event's position (topic:partition:epoch:offset).
            tails = [b',"pos":"%s:%d:%s:%d"}' % (self.topic.encode(), e.partition,
                                                 e.epoch.encode(), e.offset) for e in got]
            self.assertTrue(all(e.envelope.endswith(tail) for e, tail in zip(got, tails)))
            self.assertTrue(all(e.epoch for e in got))
            self.assertEqual([e.envelope[:-len(tail)] + b"}" for e, tail in zip(got, tails)],
                             expected)
            offsets = [e.offset for e in got]
            self.assertEqual(offsets, sorted(offsets))
            self.assertEqual({e.topic for e in got}, {self.topic})
        self.assertEqual(sample("odinws_kafka_rejected_total", reason="invalid_json"), invalid + 1)
        self.assertEqual(sample("odinws_kafka_rejected_total", reason="no_token"), no_token + 1)
        self.assertEqual(sample("odinws_kafka_records_total", topic=self.topic), 23)
        status = ingest.status()
        self.assertEqual((status["state"], status["connected"]), ("running", True))
        yield self.stop(ingest)
        self.assertEqual(ingest.status()["assigned"], [])

    def committed(self) -> Deferred:
        """The group's committed offsets of partitions 0 and 1 (-1001: none)."""
        def fetch():
            c = Consumer({"bootstrap.servers": self.broker.bootstrap,
                          "group.id": f"test-{self.group}"})
            try:
                tps = c.committed([TopicPartition(self.topic, p) for p in (0, 1)], timeout=10)
                return [tp.offset for tp in tps]
            finally:
                c.close()
        return deferToThread(fetch)

    @inlineCallbacks
    def test_offsetsAfterBatchTaken(self):
        """
        Offsets are committed only for batches whose on_batch Deferred has
        fired: stopped while holding them, the group commits nothing and a
        new consumer re-reads the records; once taken they are committed on
        stop and the next consumer starts after them.
        """
        for i in range(3):
            self.broker.produce(self.topic, b"A", b"%d" % i, partition=0)
        self.broker.flush()
        held = Collector(hold=True)
        first = self.start(held)
        yield wait_until(lambda: len(held.events) == 3, "3 held events")
        yield self.stop(first)
        self.assertEqual((yield self.committed()), [-1001, -1001])

        taken = Collector()
        second = self.start(taken)
        yield wait_until(lambda: len(taken.events) == 3, "3 re-read events")
        self.assertEqual([e.offset for e in taken.events], [0, 1, 2])
        yield self.stop(second)
        self.assertEqual((yield self.committed())[0], 3)

        self.broker.produce(self.topic, b"A", b"3", partition=0)
        self.broker.flush()
        third_batches = Collector()
        third = self.start(third_batches)
        yield wait_until(lambda: third_batches.events, "the new event")
        self.assertEqual([e.offset for e in third_batches.events], [3])
        yield self.stop(third)

    @inlineCallbacks
    def test_backpressure(self):
        """
        With max_pending batches held in the reactor, no further batch is
        handed over: the records wait in Kafka (the status shows the lag)
        and arrive, all of them, once the held batch is taken.
        """
        collector = Collector(hold=True)
        settings = make_settings(self.broker.bootstrap, self.topic, self.group)
        ingest = KafkaIngest(reactor, settings, 0, RecordMapper.from_settings(settings.kafka),
                             collector, max_pending=1)
        ingest.startService()
        self.addCleanup(lambda: ingest.stopService() if ingest.running else None)
        yield self.assigned(ingest)
        self.broker.produce(self.topic, b"A", b"0", partition=0)
        self.broker.flush()
        yield wait_until(lambda: collector.batches, "the first batch")
        for i in range(1, 6):
            self.broker.produce(self.topic, b"A", b"%d" % i, partition=0)
        self.broker.flush()
        yield wait_until(lambda: ingest.status()["lag"] >= 5, "lag of the waiting records")
        self.assertEqual(len(collector.batches), 1)
        collector.hold = False
        collector.held.pop().callback(None)
        yield wait_until(lambda: len(collector.events) == 6, "all 6 events")
        self.assertEqual([e.offset for e in collector.events], list(range(6)))
        yield wait_until(lambda: ingest.status()["lag"] == 0, "no lag")
        yield self.stop(ingest)

    @inlineCallbacks
    def test_unreachableBroker(self):
        """
        Pointed at a closed port the consumer reports retrying and not
        connected, logs the outage once per kind of error rather than per
        retry, raises nothing into the reactor, and stops cleanly.
        """
        ingest = self.start(Collector(), bootstrap=f"127.0.0.1:{free_port()}")
        before = sample("odinws_kafka_errors_total", kind="transport")
        yield wait_until(lambda: ingest.status()["state"] == "retrying", "retrying")
        yield wait_until(
            lambda: sample("odinws_kafka_errors_total", kind="transport") >= before + 5,
            "repeated transport errors")
        status = ingest.status()
        self.assertFalse(status["connected"])
        self.assertEqual(status["assigned"], [])
        self.assertIn("Connection refused", status["last_error"])
        lines = self.kafka_lines()
        self.assertLess(len(lines), 5, [e.get("log_format") for e in lines])
        yield self.stop(ingest)

    @inlineCallbacks
    def test_brokerComesBack(self):
        """
        When the broker goes away the status turns to retrying and not
        connected; when it is back (on the same address) consumption
        resumes by itself and the status is running and connected again.
        """
        broker = new_broker(os.path.abspath(self.mktemp()))
        yield deferToThread(broker.start)
        self.addCleanup(broker.stop)
        broker.create_topics([self.topic], partitions=2)
        collector = Collector()
        ingest = self.start(collector, bootstrap=broker.bootstrap)
        yield self.assigned(ingest)
        broker.produce(self.topic, b"A", b'"before"', partition=0)
        broker.flush()
        yield wait_until(lambda: collector.events, "the first event")

        yield deferToThread(broker.down)
        yield wait_until(lambda: ingest.status()["state"] == "retrying", "retrying")
        self.assertFalse(ingest.status()["connected"])
        yield deferToThread(broker.up)
        if not broker.keeps_data:
            # Tansu's storage is in memory: the topic is gone with the old process.
            yield deferToThread(broker.create_topics, [self.topic], 2)
        # (Apache Kafka on a busy machine: the restart and the group's rejoin
        # took over 30 s once.)
        yield self.assigned(ingest, timeout=90)
        broker.produce(self.topic, b"A", b'"after"', partition=1)
        broker.flush()
        yield wait_until(lambda: len(collector.events) == 2, "the event after the restart", 90)
        self.assertEqual(json.loads(collector.events[1].envelope)["data"], "after")
        yield wait_until(lambda: ingest.status()["connected"], "connected")
        self.assertEqual(ingest.status()["state"], "running")
        yield self.stop(ingest)

    @inlineCallbacks
    def test_badConsumerConfig(self):
        """
        A consumer librdkafka refuses to create is reported once, in the
        log and as state error in the status, and stopping still works.
        """
        ingest = self.start(Collector(), **{"kafka.consumer_config": {"no.such.setting": 1}})
        status = ingest.status()
        self.assertEqual(status["state"], "error")
        self.assertIn("no.such.setting", status["last_error"])
        self.assertEqual(len(self.kafka_lines()), 1)
        yield ingest.stopService()
        self.assertEqual(ingest.status()["state"], "error")


class FakeIngest:
    """The owner's consumer-thread API, recorded."""

    rejoin_reason = "asked"

    def __init__(self):
        self.batches: list[list] = []
        self.audited: list[str] = []
        self.fatals: list[str] = []
        self.paused: list[bool] = []

    def pausing(self, paused):
        self.paused.append(paused)

    def hand_over(self, batch_id, events):
        self.batches.append(events)

    def broker_reached(self):
        pass

    def publish_assignment(self, assigned):
        pass

    def note_error(self, kind, text, level="warn"):
        raise AssertionError(text)

    def on_error(self, err):
        # What KafkaIngest.on_error does with an error that is neither fatal
        # nor a connection error.
        self.note_error(err.name().lstrip("_").lower(), err.str())

    def fatal(self, kind, text):
        self.fatals.append(text)

    def audit(self, fmt, **kw):
        self.audited.append(fmt.format(**kw))

    def log(self, level, fmt, **kw):
        pass


class FakeIncarnations(TopicIncarnations):
    """Topic identities from a dict the test changes, instead of the brokers."""

    def __init__(self, ids: dict[str, str]):
        super().__init__({})
        self.ids = ids
        self.lookups = 0

    def refresh(self, topics):
        self.lookups += 1
        changed = {}
        for topic in topics:
            epoch = self.ids.get(topic, "")
            if epoch != self.epoch(topic):
                changed[topic] = self.epoch(topic)
                self._epochs[topic] = epoch
        return changed


class RebalanceConsumer:
    """The calls a rebalance callback makes on its Consumer, recorded."""

    def __init__(self):
        self.calls: list[tuple[str, list]] = []

    def assign(self, partitions):
        self.calls.append(("assign", [(tp.topic, tp.partition) for tp in partitions]))

    def unassign(self):
        self.calls.append(("unassign", []))

    def incremental_assign(self, partitions):
        self.calls.append(("incremental_assign", [(tp.topic, tp.partition) for tp in partitions]))

    def incremental_unassign(self, partitions):
        self.calls.append(("incremental_unassign",
                           [(tp.topic, tp.partition) for tp in partitions]))

    def seek(self, tp):
        self.calls.append(("seek", [(tp.topic, tp.partition, tp.offset)]))


class ConsumerLoopEpochTests(SynchronousTestCase):
    """ConsumerLoop tags events with their topic's epoch and notices logs that went back."""

    def setUp(self):
        settings = make_settings("127.0.0.1:1", "t", "g")
        self.ingest = FakeIngest()
        self.incarnations = FakeIncarnations({"t": "e1"})
        self.loop = ConsumerLoop(self.ingest, None, RecordMapper.from_settings(settings.kafka),
                                 settings.kafka, threading.Event(), queue.SimpleQueue(), 4,
                                 self.incarnations)
        self.loop.on_assign(RebalanceConsumer(), [TopicPartition("t", 0), TopicPartition("t", 1)])

    def handle(self, *offsets: tuple[int, int]) -> list:
        self.loop.handle([FakeKafkaMessage("t", p, o) for p, o in offsets])
        return self.ingest.batches[-1]

    def test_assignLooksUpAndTags(self):
        """
        An assignment looks the topics' identity up and exports the lag of
        its partitions (at 0 until the statistics say more); every event
        carries the epoch and one consumed-at time per batch; the broker's
        share of the latency is observed once per event.
        """
        self.assertEqual(self.incarnations.lookups, 1)
        self.assertEqual(metrics.REGISTRY.get_sample_value(
            "odinws_kafka_consumer_lag", {"topic": "t", "partition": "1"}), 0.0)
        observed = sample("odinws_broker_latency_seconds_count")
        events = self.handle((0, 5), (1, 7))
        self.assertEqual([e.epoch for e in events], ["e1", "e1"])
        self.assertEqual(sample("odinws_broker_latency_seconds_count") - observed, 2)
        self.assertEqual(len({e.consumed for e in events}), 1)
        self.assertGreater(events[0].consumed, 0)

    def test_rewindWithNewTopicId(self):
        """
        Offsets going back while assigned trigger a lookup before the batch
        is handed over: a new topic id gives the new records its epoch, with
        an audit line and the rewind counted.
        """
        rewinds = sample("odinws_kafka_offset_rewinds_total")
        self.handle((0, 100), (0, 101))
        self.incarnations.ids["t"] = "e2"
        events = self.handle((0, 0), (0, 1))
        self.assertEqual([(e.offset, e.epoch) for e in events], [(0, "e2"), (1, "e2")])
        self.assertEqual(sample("odinws_kafka_offset_rewinds_total") - rewinds, 1)
        self.assertIn("new incarnation (epoch e1 -> e2)", self.ingest.audited[-1])

    def test_rewindWithSameTopicId(self):
        """
        A log that went back under the same identity (reset in place) still
        gets a new epoch, so the de-duplication marks make way for it.
        """
        self.handle((0, 100))
        events = self.handle((0, 3))
        self.assertNotIn(events[0].epoch, ("", "e1"))
        self.assertIn("went back from offset 100 to 3", self.ingest.audited[-1])

    def test_reassignmentIsNoRewind(self):
        """
        Re-reading from the committed offset after a new assignment is not
        taken for a new log: the epoch stays.
        """
        self.handle((0, 100))
        self.loop.on_revoke(RebalanceConsumer(), [TopicPartition("t", 0)])
        self.loop.on_assign(RebalanceConsumer(), [TopicPartition("t", 0)])
        events = self.handle((0, 90))
        self.assertEqual(events[0].epoch, "e1")
        self.assertEqual(self.ingest.audited, [])


class ConsumerLoopRebalanceTests(SynchronousTestCase):
    """
    The rebalance callbacks answer librdkafka with the calls of the group's
    protocol (issue 16: a shard crash must not stop the other shards).
    """

    def loop(self, cooperative: bool) -> ConsumerLoop:
        settings = make_settings("127.0.0.1:1", "t", "g")
        self.ingest = FakeIngest()
        return ConsumerLoop(self.ingest, None, RecordMapper.from_settings(settings.kafka),
                            settings.kafka, threading.Event(), queue.SimpleQueue(), 4,
                            FakeIncarnations({"t": "e1"}), cooperative=cooperative)

    def test_cooperativeMovesOnlyWhatChanges(self):
        """
        Cooperative: each callback gets only the partitions that move and
        answers with incremental_assign/incremental_unassign; a partition
        kept through the rebalance stays assigned with its position, so its
        next records are neither a rewind nor dropped.
        """
        loop = self.loop(cooperative=True)
        consumer = RebalanceConsumer()
        loop.on_assign(consumer, [TopicPartition("t", 0), TopicPartition("t", 1)])
        loop.handle([FakeKafkaMessage("t", 0, 10), FakeKafkaMessage("t", 1, 20)])
        loop.on_revoke(consumer, [TopicPartition("t", 1)])
        loop.on_assign(consumer, [])
        loop.handle([FakeKafkaMessage("t", 0, 11)])
        self.assertEqual(consumer.calls, [("incremental_assign", [("t", 0), ("t", 1)]),
                                          ("incremental_unassign", [("t", 1)]),
                                          ("incremental_assign", [])])
        self.assertEqual(loop.assignment, {("t", 0)})
        self.assertEqual(loop.positions, {("t", 0): 11})
        self.assertEqual([e.offset for e in self.ingest.batches[-1]], [11])
        self.assertEqual(self.ingest.audited, [])

    def test_keptPartitionOfRecreatedTopicReadFromItsStart(self):
        """
        Cooperative: when the lookup of a rebalance finds the topic
        recreated (Tansu replaced under the node), a partition kept through
        the rebalance is read from the beginning of the new log, not from
        its old offset (which skipped the new log's first records), and its
        records carry the new epoch without being taken for a rewind.
        """
        loop = self.loop(cooperative=True)
        consumer = RebalanceConsumer()
        loop.consumer = consumer
        loop.on_assign(consumer, [TopicPartition("t", 0), TopicPartition("t", 1)])
        loop.handle([FakeKafkaMessage("t", 0, 10), FakeKafkaMessage("t", 1, 720)])
        loop.on_revoke(consumer, [TopicPartition("t", 0)])
        loop.incarnations.ids["t"] = "e2"
        loop.on_assign(consumer, [])
        self.assertEqual(consumer.calls[-2:], [("incremental_assign", []),
                                               ("seek", [("t", 1, OFFSET_BEGINNING)])])
        loop.handle([FakeKafkaMessage("t", 1, 0)])
        self.assertEqual([(e.offset, e.epoch) for e in self.ingest.batches[-1]], [(0, "e2")])
        self.assertEqual(len(self.ingest.audited), 1)
        self.assertIn("new incarnation (epoch e1 -> e2)", self.ingest.audited[0])

    def test_eagerAssignsTheWhole(self):
        """Eager: assign() with the whole new assignment, unassign() on revoke."""
        loop = self.loop(cooperative=False)
        consumer = RebalanceConsumer()
        loop.on_assign(consumer, [TopicPartition("t", 0), TopicPartition("t", 1)])
        loop.on_revoke(consumer, [TopicPartition("t", 0), TopicPartition("t", 1)])
        loop.on_assign(consumer, [TopicPartition("t", 0)])
        self.assertEqual(consumer.calls, [("assign", [("t", 0), ("t", 1)]), ("unassign", []),
                                          ("assign", [("t", 0)])])
        self.assertEqual(loop.assignment, {("t", 0)})


class FakeConsumer:
    """consume() calls recorded; answers from a script of message lists."""

    def __init__(self, answers: list[list]):
        self.answers = answers
        self.calls: list[tuple[int, float]] = []

    def consume(self, n: int, timeout: float) -> list:
        self.calls.append((n, timeout))
        return list(self.answers.pop(0)) if self.answers else []


class ConsumerLoopTakeTests(SynchronousTestCase):
    """How the loop asks librdkafka for records (issue 15: no wait for a full batch)."""

    def loop(self, consumer: FakeConsumer, poll_batch: int = 500) -> ConsumerLoop:
        settings = make_settings("127.0.0.1:1", "t", "g", **{"kafka.poll_batch": poll_batch,
                                                             "kafka.poll_timeout": 0.25})
        return ConsumerLoop(FakeIngest(), consumer, RecordMapper.from_settings(settings.kafka),
                            settings.kafka, threading.Event(), queue.SimpleQueue(), 4,
                            FakeIncarnations({"t": "e1"}))

    def test_firstRecordThenWhatIsBuffered(self):
        """
        The loop waits (up to poll_timeout) for one record only, then takes
        whatever else is already fetched without waiting, up to poll_batch:
        a quiet stream's event is not held for poll_timeout, a burst is
        still one batch.
        """
        first = [FakeKafkaMessage("t", 0, 0)]
        rest = [FakeKafkaMessage("t", 0, 1), FakeKafkaMessage("t", 0, 2)]
        consumer = FakeConsumer([first, rest])
        self.assertEqual(self.loop(consumer).take(), first + rest)
        self.assertEqual(consumer.calls, [(1, 0.25), (499, 0)])

    def test_nothingThere(self):
        """When nothing came within poll_timeout there is no second call."""
        consumer = FakeConsumer([])
        self.assertEqual(self.loop(consumer).take(), [])
        self.assertEqual(consumer.calls, [(1, 0.25)])

    def test_fatalErrorStops(self):
        """
        A fatal error returned by consume() (librdkafka's consumer fenced by
        another with this shard's group.instance.id) goes to the owner as
        fatal, and nothing after it in the batch is handled.
        """
        fenced = KafkaError(KafkaError._FATAL, "Fatal consumer error: Broker: Static consumer "
                            "fenced by other consumer with same group.instance.id")
        ingest = FakeIngest()
        loop = self.loop(FakeConsumer([]))
        loop.ingest = ingest
        loop.handle([FakeKafkaMessage("t", 0, 0, error=fenced), FakeKafkaMessage("t", 0, 1)])
        self.assertEqual(len(ingest.fatals), 1)
        self.assertIn("fenced", ingest.fatals[0])
        self.assertEqual(ingest.batches, [])

    def test_batchOfOne(self):
        """With poll_batch 1 a record is taken alone."""
        consumer = FakeConsumer([[FakeKafkaMessage("t", 0, 0)]])
        self.assertEqual(len(self.loop(consumer, poll_batch=1).take()), 1)
        self.assertEqual(consumer.calls, [(1, 0.25)])

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


class ThreadlessReactor(Clock):
    """A Clock whose callFromThread runs the call at once (the test is the consumer thread)."""

    def callFromThread(self, f, *args, **kw):
        f(*args, **kw)


def stats(*brokers: dict) -> str:
    """librdkafka statistics JSON with these brokers (and no topics)."""
    return json.dumps({"brokers": {b["name"]: b for b in brokers}, "topics": {}})


def broker(name: str = "127.0.0.1:9092/1", state: str = "UP", source: str = "learned",
           rxidle_s: float = 0.01, waiting: int = 1) -> dict:
    return {"name": name, "nodename": name.split("/")[0], "state": state, "source": source,
            "rxidle": int(rxidle_s * 1e6), "waitresp_cnt": waiting}


class FatalErrorTests(SynchronousTestCase):
    """A consumer librdkafka gave up on is shown as such, not as running."""

    def test_fencedShowsErrorAndWhy(self):
        """
        Fenced by another consumer with this shard's instance id (two nodes
        with one node_id): the status turns error, the last error names the
        instance id and what must be unique, no partition is shown, and the
        consumer thread is told to replace the consumer (not to stop).
        """
        reactor_ = ThreadlessReactor()
        ingest = KafkaIngest(reactor_, make_settings("b:1", "t", "n7"), 2, None, None)
        ingest.broker_reached()
        ingest.publish_assignment(frozenset({Partition("t", 0)}))
        ingest.fatal("fatal", "Broker: Static consumer fenced by other consumer with same "
                     "group.instance.id")
        status = ingest.status()
        self.assertEqual((status["state"], status["connected"]), ("error", False))
        self.assertIn("n7-shard2", status["last_error"])
        self.assertIn("node_id must be unique", status["last_error"])
        self.assertEqual(status["assigned"], [])
        self.assertTrue(ingest._fatal.is_set())
        self.assertFalse(ingest._stopping.is_set())
        ingest.broker_reached()   # a late assignment callback does not hide it
        self.assertEqual(ingest.status()["state"], "error")


class UnresponsiveBrokerTests(SynchronousTestCase):
    """
    A broker that accepts connections but answers nothing (issue 16): librdkafka
    keeps it "UP" for minutes, the status must not.
    """

    def setUp(self):
        self.reactor = ThreadlessReactor()
        self.logged: list[dict] = []
        globalLogPublisher.addObserver(self.logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.logged.append)
        # session 2 s: a broker silent for 2 s with requests waiting is hung.
        settings = make_settings("b:1", "t", "g", **{"kafka.session_timeout_ms": 2000,
                                                     "kafka.max_poll_interval_ms": 4000})
        self.ingest = KafkaIngest(self.reactor, settings, 0, None, None)
        self.connected = sample("odinws_kafka_connected")

    def test_silentBrokerWithRequestsWaiting(self):
        """
        A broker with requests waiting and nothing received for a session
        timeout makes the status unresponsive and not connected (and the
        metric 0), with a warning naming it; once it answers again the
        consumer is running and connected.
        """
        self.assertEqual(self.ingest.unanswered_after, 2.0)
        self.ingest._on_stats(stats(broker(rxidle_s=0.5)))
        self.assertEqual((self.ingest.status()["state"], self.ingest.status()["connected"]),
                         ("running", True))
        self.ingest._on_stats(stats(broker(rxidle_s=2.5, waiting=3)))
        status = self.ingest.status()
        self.assertEqual((status["state"], status["connected"]), ("unresponsive", False))
        self.assertIn("127.0.0.1:9092 has not answered for 2s (3 requests waiting)",
                      status["last_error"])
        self.assertEqual(sample("odinws_kafka_connected"), 0)
        self.assertTrue(any("not answering" in formatEvent(e) for e in self.logged))
        self.ingest.broker_reached()  # records from elsewhere do not hide it
        self.assertFalse(self.ingest.status()["connected"])
        self.ingest._on_stats(stats(broker(rxidle_s=0.0)))
        self.assertEqual((self.ingest.status()["state"], self.ingest.status()["connected"]),
                         ("running", True))
        self.assertEqual(sample("odinws_kafka_connected"), 1)

    def test_pauseShownBeforeTheSessionEnds(self):
        """
        At the shipped 10 s session a broker that answers nothing (a pause)
        makes the status unresponsive after 3 s of silence with requests
        waiting (fetches are answered within fetch_wait_max_ms), not after
        the session: /health says it while the pause lasts. 2.5 s is not
        yet a pause.
        """
        ingest = KafkaIngest(self.reactor, make_settings("b:1", "t", "g"), 0, None, None)
        ingest._on_stats(stats(broker(rxidle_s=2.5, waiting=1)))
        self.assertEqual((ingest.status()["state"], ingest.status()["connected"]),
                         ("running", True))
        ingest._on_stats(stats(broker(rxidle_s=3.5, waiting=1)))
        self.assertEqual((ingest.status()["state"], ingest.status()["connected"]),
                         ("unresponsive", False))

    def test_idleOrCoordinatorIsNotHung(self):
        """
        Silence with nothing waiting (no assignment, nothing to fetch) and a
        group coordinator holding a JoinGroup during a rebalance are normal.
        """
        self.ingest._on_stats(stats(broker(rxidle_s=30, waiting=0),
                                    broker("GroupCoordinator", source="logical", rxidle_s=30)))
        self.assertEqual((self.ingest.status()["state"], self.ingest.status()["connected"]),
                         ("running", True))

    def test_statisticsStop(self):
        """
        When statistics stop coming (the consumer thread is stuck), the
        status stops saying connected after the bound plus three intervals.
        """
        self.ingest._on_stats(stats(broker()))
        self.reactor.advance(2.0 + 3 * 0.5 - 0.1)  # make_settings: statistics every 0.5 s
        self.assertTrue(self.ingest.status()["connected"])
        self.reactor.advance(0.2)
        status = self.ingest.status()
        self.assertEqual((status["state"], status["connected"]), ("unresponsive", False))
        self.assertIn("no consumer statistics", status["last_error"])
        self.ingest._on_stats(stats(broker()))
        self.assertTrue(self.ingest.status()["connected"])


class BoundedStopTests(SynchronousTestCase):
    """stopService does not wait for a consumer whose close() hangs (issue 16)."""

    def test_closeHangs(self):
        """
        If the consumer thread has not finished STOP_GRACE + CLOSE_TIMEOUT
        seconds after stopService, the stop completes anyway, with a warning.
        """
        reactor_ = ThreadlessReactor()
        ingest = KafkaIngest(reactor_, make_settings("b:1", "t", "g"), 0, None, None)
        release = threading.Event()
        ingest._finished = Deferred()
        ingest._thread = threading.Thread(target=release.wait, daemon=True)
        ingest._thread.start()
        self.addCleanup(release.set)
        logged: list[dict] = []
        globalLogPublisher.addObserver(logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, logged.append)
        ingest.running = True
        done = ingest.stopService()
        reactor_.advance(STOP_GRACE + CLOSE_TIMEOUT - 0.1)
        self.assertNoResult(done)
        reactor_.advance(0.2)
        self.successResultOf(done)
        self.assertTrue(any("not closed within" in formatEvent(e) for e in logged))


class TopicErrorMessage(FakeKafkaMessage):
    """librdkafka's "Subscribed topic not available" as consume() returns it."""

    def __init__(self, topic: str):
        super().__init__(topic, -1, -1001)

    def error(self):
        return KafkaError(KafkaError.UNKNOWN_TOPIC_OR_PART,
                          f"Subscribed topic not available: {self.topic()}: Broker: Unknown "
                          "topic or partition")


class MissingTopicIngest(FakeIngest):
    """The owner's API, with the errors and missing topics recorded."""

    def __init__(self):
        super().__init__()
        self.errors: list[str] = []
        self.missing: frozenset[str] = frozenset()

    def note_error(self, kind, text, level="warn"):
        self.errors.append(text)

    def publish_missing(self, topics):
        self.missing = topics


class MissingTopicTests(SynchronousTestCase):
    """
    A configured topic the brokers say does not exist is reported as missing
    (for /health) until partitions of it are assigned to this consumer.
    """

    def setUp(self):
        settings = make_settings("127.0.0.1:1", "t", "g")
        self.ingest = MissingTopicIngest()
        self.consumer = RebalanceConsumer()
        self.loop = ConsumerLoop(self.ingest, self.consumer,
                                 RecordMapper.from_settings(settings.kafka), settings.kafka,
                                 threading.Event(), queue.SimpleQueue(), 4,
                                 FakeIncarnations({"t": "e1"}))

    def test_reportedUntilAssigned(self):
        """
        The error names the topic: it is missing (and the error noted) until
        partitions of it are assigned; others' assignments do not clear it.
        """
        self.loop.handle([TopicErrorMessage("t")])
        self.assertEqual(self.ingest.missing, {"t"})
        self.assertIn("Subscribed topic not available: t", self.ingest.errors[0])
        self.loop.on_assign(self.consumer, [TopicPartition("u", 0)])
        self.assertEqual(self.ingest.missing, {"t"})

    def test_assignmentClears(self):
        """Partitions of the topic assigned: it exists, whatever the metadata said."""
        self.loop.handle([TopicErrorMessage("t")])
        self.loop.on_assign(self.consumer, [TopicPartition("t", 0)])
        self.assertEqual(self.ingest.missing, frozenset())

    def test_otherTopicsIgnored(self):
        """A topic that is not configured (e.g. from a regex) is not reported missing."""
        self.loop.handle([TopicErrorMessage("other")])
        self.assertEqual(self.ingest.missing, frozenset())


class StatusTruthTests(SynchronousTestCase):
    """The consumer's status says what holds now, and for how long it has not connected."""

    def setUp(self):
        self.reactor = ThreadlessReactor()
        self.ingest = KafkaIngest(self.reactor, make_settings("b:1", "t", "g"), 0, None, None)

    def test_disconnectedFor(self):
        """
        Never connected: counted from the start; connected: 0; after losing
        the broker: counted from when it was last seen.
        """
        self.reactor.advance(7)
        self.assertEqual(self.ingest.status()["disconnected_for"], 7.0)
        self.ingest._on_stats(stats(broker()))
        self.assertEqual(self.ingest.status()["disconnected_for"], 0.0)
        self.reactor.advance(1)
        self.ingest._on_stats(stats(broker(state="DOWN")))
        self.reactor.advance(4)
        self.assertEqual(self.ingest.status()["disconnected_for"], 5.0)

    def test_unassignedFor(self):
        """
        Without partitions: counted from the start; holding some: 0; after
        losing them all (a rebalance, a stalled group): counted from then.
        """
        self.reactor.advance(3)
        self.assertEqual(self.ingest.status()["unassigned_for"], 3.0)
        self.ingest.publish_assignment(frozenset({Partition("t", 0)}))
        self.reactor.advance(10)
        self.assertEqual(self.ingest.status()["unassigned_for"], 0.0)
        self.ingest.publish_assignment(frozenset())
        self.reactor.advance(6)
        self.ingest.publish_assignment(frozenset())
        self.assertEqual(self.ingest.status()["unassigned_for"], 6.0)

    def test_errorClearedWhenItNoLongerHolds(self):
        """
        A connection error stays while retrying and is cleared when the
        consumer runs again (one reported once running does not become the
        status's); an error while running (a topic not there yet) is
        cleared when partitions are assigned, not before.
        """
        self.ingest._on_stats(stats(broker()))
        self.ingest._on_stats(stats(broker(state="DOWN")))
        self.ingest.on_error(KafkaError(KafkaError._ALL_BROKERS_DOWN, "1/1 brokers are down"))
        self.assertEqual(self.ingest.status()["last_error"], "1/1 brokers are down")
        self.ingest._on_stats(stats(broker()))
        self.assertIsNone(self.ingest.status()["last_error"])
        # A connection error reported once running (a late report of the
        # outage, one broker of several) is counted, not the status.
        before = sample("odinws_kafka_errors_total", kind="transport")
        self.ingest.on_error(KafkaError(KafkaError._TRANSPORT, "b:1/bootstrap: Connect failed"))
        self.assertIsNone(self.ingest.status()["last_error"])
        self.assertEqual(sample("odinws_kafka_errors_total", kind="transport"), before + 1)
        self.ingest.note_error("unknown_topic_or_part", "Subscribed topic not available: t")
        self.ingest.publish_missing(frozenset({"t"}))
        self.ingest.publish_assignment(frozenset())
        self.assertEqual(self.ingest.status()["last_error"], "Subscribed topic not available: t")
        self.assertEqual(self.ingest.status()["missing_topics"], ["t"])
        self.ingest.publish_missing(frozenset())
        self.ingest.publish_assignment(frozenset({Partition("t", 0)}))
        status = self.ingest.status()
        self.assertEqual((status["last_error"], status["missing_topics"]), (None, []))


class TopicsStatusTests(SynchronousTestCase):
    """What a shard reports of its topics for the parent's coverage check (parent/coverage.py)."""

    def test_partitionCountsFromStatistics(self):
        """
        Each configured topic's partition count comes from the consumer's
        statistics (its own metadata: every partition of a topic it holds
        some of, and librdkafka's internal -1), with the partitions held
        here; topics not configured are left out.
        """
        ingest = KafkaIngest(ThreadlessReactor(), make_settings("b:1", "t", "g"), 0, None, None)
        ingest.publish_assignment(frozenset({Partition("t", 1)}))
        ingest._on_stats(json.dumps({"brokers": {}, "topics": {
            "t": {"partitions": {"-1": {}, "0": {}, "1": {}, "2": {}, "3": {}}},
            "other": {"partitions": {"0": {}}}}}))
        self.assertEqual(ingest.status()["topics"], {"t": {"partitions": 4, "assigned": [1]}})

    def test_rejoinOnlyWhileConsuming(self):
        """
        The parent's rejoin request reaches the consumer thread (an event it
        polls) only while a consumer runs; a stopped ingest says it cannot.
        """
        ingest = KafkaIngest(ThreadlessReactor(), make_settings("b:1", "t", "g"), 0, None, None)
        self.assertFalse(ingest.rejoin())
        self.assertFalse(ingest._rejoin.is_set())
