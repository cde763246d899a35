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
import time
import uuid

from confluent_kafka import Consumer, KafkaError, TopicPartition
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from odin_ws.common.events import Partition
from odin_ws.shard.history.holes import is_hole
from odin_ws.shard.kafka.consumerloop import STOP_GRACE, ConsumerLoop
from odin_ws.shard.kafka.ingest import CLOSE_TIMEOUT, KafkaIngest
from odin_ws.shard.kafka.records import RecordMapper
from tests.helpers import sample
from tests.helpers.broker import free_port, new_broker, shared_broker
from tests.helpers.fakes import FakeKafkaMessage
from tests.helpers.kafkafakes import (
    FakeIncarnations,
    FakeIngest,
    RebalanceConsumer,
    ThreadlessReactor,
    make_settings,
)

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
    def test_batchesQueuedBehindABusyReactorAreOneDelivery(self):
        """
        Records consumed one poll each while the reactor is busy with a
        delivery reach on_batch together once it is free: one delivery, in
        order, the batches that joined counted.
        """
        joined = sample("odinws_kafka_batches_joined_total")
        deliveries: list[list[int]] = []
        ingest: KafkaIngest

        def on_batch(events):
            deliveries.append([e.offset for e in events])
            if len(deliveries) > 1:
                return
            # The reactor is busy with this delivery while the consumer
            # thread polls three more records, one batch each.
            for i in range(1, 4):
                self.broker.produce(self.topic, b"A", b"%d" % i, partition=0)
                self.broker.flush()
                deadline = time.monotonic() + TIMEOUT
                while ingest._handover.waiting < i:
                    if time.monotonic() > deadline:
                        raise AssertionError(f"batch {i} not handed over")
                    time.sleep(0.005)

        ingest = self.start(on_batch)
        yield self.assigned(ingest)
        self.broker.produce(self.topic, b"A", b"0", partition=0)
        self.broker.flush()
        yield wait_until(lambda: len(deliveries) == 2, "the second delivery")
        self.assertEqual(deliveries, [[0], [1, 2, 3]])
        self.assertEqual(sample("odinws_kafka_batches_joined_total"), joined + 2)
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

