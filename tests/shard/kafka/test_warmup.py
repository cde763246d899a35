"""
The warm-up of a starting shard (L{odin_ws.shard.kafka.warmup}) with a fake
consumer, and how the shard joins what it read to live delivery
(L{odin_ws.shard.service.Shard.backfill}): history, snapshot cache,
de-duplication marks and the relay of re-read batches.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

from confluent_kafka import KafkaError, KafkaException, TopicPartition
from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from odin_ws.common import config as configmod
from odin_ws.common import metrics
from odin_ws.common.events import Event, Partition, decode_batch
from odin_ws.common.settings import Settings
from odin_ws.shard.kafka.records import RecordMapper
from odin_ws.shard.kafka.warmread import WarmedPartition, WarmupReport, WarmupState
from odin_ws.shard.kafka.warmup import HistoryWarmup, LateRuns
from tests.helpers import ShardTestCase, sample, text
from tests.helpers.fakes import FakeKafkaMessage

TOPIC = "odin.trades"


class _Topic:
    def __init__(self, partitions):
        self.partitions = {p: None for p in partitions}
        self.error = None


class FakeConsumer:
    """
    A partition is a list of (value, ts) from its low watermark; C{stall_at}
    makes one stop delivering (no end of partition) from an offset on.
    """

    def __init__(self, logs: dict[tuple[str, int], list], low: int = 0,
                 stall_at: dict | None = None, block: threading.Event | None = None):
        self.logs = logs
        self.low = low
        self.stall_at = stall_at or {}
        self.block = block
        self.positions: dict[tuple[str, int], int] = {}
        self.eof_sent: set = set()
        self.closed = False
        self.asked_times: list[int] = []

    def list_topics(self, timeout):
        topics = {}
        for t, p in self.logs:
            topics.setdefault(t, []).append(p)
        return type("Metadata", (), {"topics": {t: _Topic(ps) for t, ps in topics.items()}})

    def get_watermark_offsets(self, tp, timeout, cached):
        return self.low, self.low + len(self.logs[(tp.topic, tp.partition)])

    def offsets_for_times(self, tps, timeout):
        out = []
        for tp in tps:
            self.asked_times.append(tp.offset)
            log = self.logs[(tp.topic, tp.partition)]
            found = next((self.low + i for i, (_, ts) in enumerate(log) if ts >= tp.offset), -1)
            out.append(TopicPartition(tp.topic, tp.partition, found))
        return out

    def assign(self, tps):
        self.positions = {(tp.topic, tp.partition): tp.offset for tp in tps}

    def consume(self, n, timeout):
        if self.block is not None:
            self.block.wait(timeout)
            return []
        out = []   # round robin, a record of each partition in turn, as fetches interleave
        progress = True
        while progress and len(out) < n:
            progress = False
            for key, position in self.positions.items():
                log = self.logs[key]
                if position < min(self.low + len(log), self.stall_at.get(key, 1 << 60)):
                    value, ts = log[position - self.low]
                    out.append(FakeKafkaMessage(*key, position, b"K%d" % (position % 3), value, ts))
                    self.positions[key] = position + 1
                    progress = True
                elif position == self.low + len(log) and key not in self.eof_sent:
                    self.eof_sent.add(key)
                    out.append(FakeKafkaMessage(*key, position, b"K%d" % (position % 3), eof=True))
        return out

    def pause(self, tps):
        pass

    def close(self):
        self.closed = True


class FakeIncarnations:
    def refresh(self, topics):
        return {}

    def epoch(self, topic):
        return "ep1"


class ImmediateReactor(Clock):
    """callFromThread runs at once (in the warm-up's thread): the test waits for on_done."""

    def callFromThread(self, f, *args, **kw):
        f(*args, **kw)


def settings(**overrides) -> Settings:
    overrides.setdefault("kafka__topics", {TOPIC: "trade"})
    return Settings.from_config(configmod.load(None, environ={}).replace(**overrides))


def record(seq: int) -> bytes:
    return json.dumps({"seq": seq}).encode()


class WarmupTests(SynchronousTestCase):
    """What the warm-up reads, and what it hands to the reactor."""

    def warm(self, consumer: FakeConsumer, **overrides):
        s = settings(**overrides)
        self.reactor = ImmediateReactor()
        self.handed: list[WarmedPartition] = []
        done = threading.Event()
        self.reports: list[Any] = []

        def ended(report):
            self.reports.append(report)
            done.set()
        self.configs: list[Any] = []

        def factory(conf):
            self.configs.append(conf)
            return consumer
        warmup = HistoryWarmup(self.reactor, s, RecordMapper.from_settings(s.kafka),
                               {"bootstrap.servers": "127.0.0.1:1", "group.id": "odinws-n",
                                "logger": object(), "session.timeout.ms": 2000},
                               self.handed.append, ended, factory, FakeIncarnations())
        warmup.startService()
        self.addCleanup(warmup.stopService)
        if s.history.warmup_timeout > 0:
            self.assertTrue(done.wait(30))
        return warmup

    def seqs(self, warmed: WarmedPartition) -> list[int | str]:
        """The seqs of the events read back, a hole (its gap's reason) in its place."""
        return [json.loads(e.envelope).get("data", {"seq": "undecodable"})["seq"]
                for e in warmed.events]

    def test_reads_the_recent_past_of_every_partition(self):
        """
        Per partition from max(low, high - max_events, the first record younger
        than max_age) to the end; events carry the topic's epoch; a keyed
        record that is not JSON is read back as a hole (its subscribers are
        told in its place by a recovery after a restart too).
        """
        now = int(time.time() * 1000)
        old, young = now - 3_600_000, now - 1000
        logs = {(TOPIC, 0): [(record(i), old if i < 3 else young) for i in range(10)],
                (TOPIC, 1): [(record(100 + i), young) for i in range(10)] + [(b"nope", young)],
                (TOPIC, 2): [(record(200), old)]}
        consumer = FakeConsumer(logs, low=50)
        warmup = self.warm(consumer, history__max_events_per_partition=6)
        by = {w.partition: w for w in self.handed}
        # Partition 2, nothing young enough: its position only (after offset 50).
        self.assertEqual(sorted(by), [0, 1, 2])
        self.assertEqual((by[2].start, by[2].through, by[2].events), (51, 50, []))
        self.assertEqual((by[0].start, by[0].through, self.seqs(by[0])),
                         (54, 59, [4, 5, 6, 7, 8, 9]))
        self.assertEqual((by[1].start, by[1].through, self.seqs(by[1])),
                         (55, 60, [105, 106, 107, 108, 109, "undecodable"]))
        self.assertEqual({e.epoch for w in self.handed for e in w.events}, {"ep1"})
        self.assertEqual(warmup.status()["state"], "done")
        self.assertEqual((warmup.status()["events"], warmup.status()["partitions"]), (12, 2))
        self.assertTrue(consumer.closed)

    def test_own_consumer_outside_the_group(self):
        """Its own group id (never joined: assign only), nothing committed, the node's logger not taken."""
        self.warm(FakeConsumer({(TOPIC, 0): [(record(1), 1)]}), history__max_age=0,
                  node_id="n1")
        conf = self.configs[0]
        self.assertEqual((conf["group.id"][:-12], conf["enable.auto.commit"],
                          conf["enable.partition.eof"]), ("odinws-n1-warmup-", False, True))
        self.assertNotIn("session.timeout.ms", conf)
        self.assertEqual(conf["logger"].name, "odinws.warmup.librdkafka")

    def test_reads_what_the_live_consumer_reads(self):
        """
        The warm-up reads committed records only, as the group consumer does:
        records of aborted transactions never reach the history.
        """
        self.warm(FakeConsumer({(TOPIC, 0): [(record(1), 1)]}), history__max_age=0)
        self.assertEqual(self.configs[0]["isolation.level"], "read_committed")

    def test_byte_budget_drops_the_oldest_first(self):
        """Past history.max_bytes the oldest buffered events go first, whatever the partition."""
        logs = {(TOPIC, 0): [(record(i), 1000 + 2 * i) for i in range(50)],
                (TOPIC, 1): [(record(100 + i), 1001 + 2 * i) for i in range(50)]}
        size = len(RecordMapper.from_settings(settings().kafka).map(
            TOPIC, b"K", record(10), 1, 0, 10).envelope) + 400
        self.warm(FakeConsumer(logs), history__max_age=0, history__max_bytes=size * 10)
        events = sorted((e for w in self.handed for e in w.events), key=lambda e: e.ts)
        self.assertLessEqual(len(events), 10)
        self.assertEqual([json.loads(e.envelope)["data"]["seq"] for e in events][-4:],
                         [48, 148, 49, 149])
        for w in self.handed:   # what is handed over is whole from its start
            self.assertEqual([e.offset for e in w.events], list(range(w.start, w.through + 1)))

    def test_time_limit_hands_over_what_was_read(self):
        """Out of time: a partition read in part goes over through its last offset read."""
        logs = {(TOPIC, 0): [(record(i), 1) for i in range(10)],
                (TOPIC, 1): [(record(100 + i), 1) for i in range(10)]}
        self.warm(FakeConsumer(logs, stall_at={(TOPIC, 1): 4}), history__max_age=0,
                  history__warmup_timeout=0.3)
        by = {w.partition: w for w in self.handed}
        self.assertEqual((by[0].through, by[1].through, self.seqs(by[1])),
                         (9, 3, [100, 101, 102, 103]))
        self.assertEqual((self.reports[0].state, self.reports[0].incomplete), ("done", 1))

    def test_late_partitions_read_alone_after_the_start(self):
        """
        warm() of a partition first seen after the warm-up (the warm gate's
        late case) reads it back alone, by the same rules, in a run of its
        own, with a consumer of its own, and reports the run with its
        partitions; the start's report (/health) stays the start's.
        """
        now = int(time.time() * 1000)
        logs = {(TOPIC, p): [(record(10 * p + i), now - 1000) for i in range(5)]
                for p in range(3)}
        consumers = [FakeConsumer(logs), FakeConsumer(logs)]
        s = settings(history__max_events_per_partition=3)
        started, late = threading.Event(), threading.Event()
        ends: list[Any] = []
        handed: list[WarmedPartition] = []

        def late_done(partitions, report):
            ends.append((partitions, report.state, report.partitions))
            late.set()
        warmup = HistoryWarmup(ImmediateReactor(), s, RecordMapper.from_settings(s.kafka),
                               {"bootstrap.servers": "x"}, handed.append,
                               lambda r: started.set(), lambda conf: consumers.pop(0),
                               FakeIncarnations(), on_late=late_done)
        warmup.startService()
        self.addCleanup(warmup.stopService)
        self.assertTrue(started.wait(30))
        # (Its callbacks ran in its thread: ImmediateReactor.) Over before warm().
        warmup._thread.join(30)
        self.assertEqual(sorted(w.partition for w in handed), [0, 1, 2])
        handed.clear()
        warmup.warm({(TOPIC, 1)})
        self.assertTrue(late.wait(30))
        self.assertEqual([(w.partition, w.start, w.through) for w in handed], [(1, 2, 4)])
        self.assertEqual(ends, [({(TOPIC, 1)}, "done", 1)])
        self.assertEqual((warmup.status()["state"], warmup.status()["partitions"]), ("done", 3))
        late_status = warmup.status()["late"]
        self.assertEqual((late_status["reading"], late_status["waiting"], late_status["runs"]),
                         ([], [], 1))
        self.assertEqual((late_status["last"]["state"], late_status["last"]["partitions"]),
                         ("done", [f"{TOPIC}[1]"]))

    def late_warmup(self, late_consumer: Any, **overrides: Any) -> tuple[HistoryWarmup, Any]:
        """
        A warm-up whose start has ended (three partitions read), its later
        runs' consumers from C{late_consumer}; and the list of their ends
        with an Event set at each.
        """
        now = int(time.time() * 1000)
        logs = {(TOPIC, p): [(record(10 * p + i), now - 1000) for i in range(5)]
                for p in range(3)}
        s = settings(**overrides)
        reactor = ImmediateReactor()
        consumers = [lambda: FakeConsumer(logs), late_consumer]
        ends: list[Any] = []
        ends_set = threading.Event()

        def late_done(partitions, report):
            ends.append((partitions, report))
            ends_set.set()
        started = threading.Event()
        warmup = HistoryWarmup(reactor, s, RecordMapper.from_settings(s.kafka),
                               {"bootstrap.servers": "x"}, lambda w: None,
                               lambda r: started.set(), lambda conf: consumers.pop(0)(),
                               FakeIncarnations(), on_late=late_done)
        warmup.startService()
        self.addCleanup(warmup.stopService)
        self.assertTrue(started.wait(30))
        warmup._thread.join(30)
        return warmup, (ends, ends_set)

    def test_late_run_reading_then_stopped(self):
        """
        A late run whose consumer hangs shows in the shard's status as
        reading its partition, for as long as it has (the reactor's clock),
        and in odinws_history_late_warmup_seconds; stopped, it is the last
        run, state stopped, counted as such, and nothing reads any more.
        """
        block = threading.Event()
        self.addCleanup(block.set)
        warmup, (ends, ended) = self.late_warmup(
            lambda: FakeConsumer({(TOPIC, 1): [(record(1), int(time.time() * 1000))]},
                                 block=block))
        stopped = metrics.REGISTRY.get_sample_value("odinws_history_late_warmups_total",
                                                    {"result": "stopped"}) or 0.0
        warmup.warm({(TOPIC, 1)})
        warmup._reactor.advance(41)
        late = warmup.status()["late"]
        self.assertEqual((late["reading"], late["reading_for"], late["waiting"], late["runs"]),
                         ([f"{TOPIC}[1]"], 41.0, [], 0))
        self.assertEqual(metrics.REGISTRY.get_sample_value("odinws_history_late_warmup_seconds"),
                         41.0)
        warmup.stopService()
        self.assertTrue(ended.wait(30))
        late = warmup.status()["late"]
        self.assertEqual((late["reading"], late["reading_for"], late["runs"]), ([], None, 1))
        self.assertEqual((late["last"]["state"], late["last"]["partitions"]),
                         ("stopped", [f"{TOPIC}[1]"]))
        self.assertEqual(metrics.REGISTRY.get_sample_value("odinws_history_late_warmups_total",
                                                           {"result": "stopped"}), stopped + 1)
        self.assertEqual(metrics.REGISTRY.get_sample_value("odinws_history_late_warmup_seconds"),
                         0.0)

    def test_late_run_failed(self):
        """
        A late run that fails (its consumer cannot be made) is the last run,
        state failed with the error, counted as failed; the start's report
        stays done.
        """
        def broken() -> Any:
            raise KafkaException(KafkaError(KafkaError._INVALID_ARG, "bad config"))
        warmup, (ends, ended) = self.late_warmup(broken)
        failed = metrics.REGISTRY.get_sample_value("odinws_history_late_warmups_total",
                                                   {"result": "failed"}) or 0.0
        warmup.warm({(TOPIC, 2)})
        self.assertTrue(ended.wait(30))
        status = warmup.status()
        last = status["late"]["last"]
        self.assertEqual((status["state"], status["late"]["runs"], last["state"],
                          last["partitions"]), ("done", 1, "failed", [f"{TOPIC}[2]"]))
        self.assertIn("bad config", last["error"])
        self.assertEqual(metrics.REGISTRY.get_sample_value("odinws_history_late_warmups_total",
                                                           {"result": "failed"}), failed + 1)

    def test_late_partitions_when_stopped(self):
        """Asked while the service is not running: reported at once, nothing read."""
        s = settings()
        ends: list[Any] = []
        warmup = HistoryWarmup(ImmediateReactor(), s, RecordMapper.from_settings(s.kafka),
                               {"bootstrap.servers": "x"}, lambda w: None, lambda r: None,
                               lambda conf: self.fail("no consumer"), FakeIncarnations(),
                               on_late=lambda ps, r: ends.append((ps, r.state)))
        warmup.warm([(TOPIC, 0)])
        self.assertEqual(ends, [({(TOPIC, 0)}, "stopped")])

    def test_off(self):
        """history.warmup_timeout 0: no consumer, no thread, state off."""
        warmup = self.warm(FakeConsumer({}), history__warmup_timeout=0)
        self.assertEqual((self.configs, warmup.status()["state"]), ([], "off"))

    def test_stop_is_bounded(self):
        """stopService fires within its bound even while the consumer does not return."""
        block = threading.Event()
        s = settings()
        reactor = ImmediateReactor()
        warmup = HistoryWarmup(reactor, s, RecordMapper.from_settings(s.kafka),
                               {"bootstrap.servers": "x"}, lambda w: None, lambda r: None,
                               lambda conf: FakeConsumer({(TOPIC, 0): [(record(1), 1)]},
                                                         block=block),
                               FakeIncarnations())
        warmup.startService()
        self.addCleanup(block.set)
        stopped = warmup.stopService()
        reactor.advance(2.0)
        self.assertTrue(stopped.called)


class LateRunsTests(SynchronousTestCase):
    """What the shard's status (and so /health) shows of the warm-ups of late partitions."""

    def setUp(self):
        self.clock = Clock()
        self.late = LateRuns(self.clock)

    def sample(self, name: str, **labels: str) -> float:
        value = metrics.REGISTRY.get_sample_value(name, labels)
        return 0.0 if value is None else value

    def test_waiting_reading_ended(self):
        """
        Partitions asked for wait (since when), are read (since when), and
        the run's end is kept as the last, counted by result; the gauge
        counts those waiting or being read.
        """
        waiting = {(TOPIC, 2), (TOPIC, 3)}
        self.late.asked(first=True)
        self.clock.advance(2)
        status = self.late.status(waiting)
        self.assertEqual((status["waiting"], status["waiting_for"], status["reading"]),
                         ([f"{TOPIC}[2]", f"{TOPIC}[3]"], 2.0, []))
        self.assertEqual(self.sample("odinws_history_late_warmup_partitions"), 2)
        self.late.started(waiting)
        self.clock.advance(1.5)
        status = self.late.status(set())
        self.assertEqual((status["reading"], status["reading_for"], status["waiting"],
                          status["waiting_for"]),
                         ([f"{TOPIC}[2]", f"{TOPIC}[3]"], 1.5, [], None))
        done = self.sample("odinws_history_late_warmups_total", result="done")
        cut = self.sample("odinws_history_late_warmups_total", result="incomplete")
        self.late.ended(waiting, WarmupReport(WarmupState.DONE, 7, 2, 1, 1.5))
        self.clock.advance(4)
        status = self.late.status(set())
        self.assertEqual((status["reading"], status["reading_for"], status["runs"]), ([], None, 1))
        self.assertEqual((status["last"]["state"], status["last"]["incomplete"],
                          status["last"]["ago"]), ("done", 1, 4.0))
        self.assertEqual(self.sample("odinws_history_late_warmups_total", result="incomplete"),
                         cut + 1)
        self.assertEqual(self.sample("odinws_history_late_warmups_total", result="done"), done)
        self.assertEqual(self.sample("odinws_history_late_warmup_partitions"), 0)

    def test_waiting_since_the_first_asked(self):
        """More partitions asked while some wait keep the first's time; after a run, anew."""
        self.late.asked(first=True)
        self.clock.advance(3)
        self.late.asked(first=False)
        self.assertEqual(self.late.status({(TOPIC, 0), (TOPIC, 1)})["waiting_for"], 3.0)
        self.late.started({(TOPIC, 0), (TOPIC, 1)})
        self.late.ended({(TOPIC, 0), (TOPIC, 1)}, WarmupReport(WarmupState.DONE))
        self.clock.advance(5)
        self.late.asked(first=True)
        self.clock.advance(1)
        self.assertEqual(self.late.status({(TOPIC, 4)})["waiting_for"], 1.0)


class ShardBackfillTests(ShardTestCase):
    """Shard.backfill: the warm-up joined to live delivery (relayed: a node of two shards)."""

    settings = {"kafka__topics": {TOPIC: "trade"}, "shards": 2}

    def event(self, offset: int, token: str = "A", epoch: str = "ep1", partition: int = 0,
              ts: int | None = None):
        ts = int(time.time() * 1000) if ts is None else ts
        return Event.build(token, "trade", b'{"o":%d}' % offset, ts, TOPIC, partition, offset,
                           epoch)

    def warmed(self, offsets, start=None, through=None, epoch="ep1", token="A", since=None,
               partition=0):
        """A warm-up's partition; events produced before the shard started, or from C{since}."""
        events = [self.event(o, token, epoch, partition=partition,
                             ts=self.shard.backfill.started_ms - 1000
                             if since is None or o < since else self.shard.backfill.started_ms)
                  for o in offsets]
        start = offsets[0] if start is None else start
        through = offsets[-1] if through is None else through
        self.shard.backfill.backfill(WarmedPartition(TOPIC, partition, epoch, start, through,
                                                     events))

    def relayed(self) -> list[list[tuple[int, int]]]:
        """What the shard sends the hub from now on: (partition, offset) per batch."""
        published: list[list[tuple[int, int]]] = []

        class Link:
            def callRemote(self, command, batch):
                published.append([(e.partition, e.offset) for e in decode_batch(batch)])
        self.shard.link = Link()
        return published

    def got(self, client) -> list[int]:
        self.advance(0)
        return [m["data"]["o"] for m in client.messages() if m["type"] == "event"]

    def recover(self, client, offset: int) -> tuple[dict, list[int]]:
        client.send(text({"type": "subscribe", "channels": ["odin.token.*.trade"],
                          "since": [f"{TOPIC}:0:ep1:{offset}"]}))
        self.advance(0)
        msgs = client.messages()
        return msgs[0], [m["data"]["o"] for m in msgs[1:]]

    def test_warm_history_snapshot_and_marks(self):
        """
        Before any live event: recovery and snapshots answer from the backfill,
        the consumer's re-read of those offsets is not delivered again, and
        what follows is.
        """
        before = sample("odinws_history_warmed_events_total")
        early = self.connect()
        self.subscribe(early, "odin.token.*.trade")
        self.warmed(range(10, 20), through=21)
        self.assertEqual(sample("odinws_history_warmed_events_total") - before, 10)
        self.assertEqual(self.got(early), [])        # the past: by recovery, not live
        watcher = self.connect()
        ack, replayed = self.recover(watcher, 14)
        self.assertEqual((ack["recovered"], replayed), (True, [15, 16, 17, 18, 19]))
        snap = self.connect()
        snap.send(text({"type": "subscribe", "channels": ["odin.token.A.trade"],
                        "snapshot": True}))
        self.advance(0)
        self.assertEqual([m.get("data", {}).get("o") for m in snap.messages()][1:], [19])
        self.shard.delivery.on_kafka_batch([self.event(o) for o in range(5, 23)])
        self.assertEqual(self.got(watcher), [22])
        self.assertEqual(self.shard.delivery.seen.marks[(TOPIC, 0)], ("ep1", 22))

    def test_events_since_the_start_are_live(self):
        """
        Events produced since the shard started, read by the warm-up before
        live delivery brought them, go to subscribers now, once, in order.
        """
        client = self.connect()
        self.subscribe(client, "odin.token.*.trade")
        self.warmed(range(10, 20), since=16)
        self.shard.delivery.deliver([self.event(o) for o in range(15, 22)])
        self.assertEqual(self.got(client), [16, 17, 18, 19, 20, 21])
        ack, replayed = self.recover(self.connect(), 9)
        self.assertEqual((ack["recovered"], replayed), (True, list(range(10, 22))))

    def test_live_first_then_the_warmup_read_past_it(self):
        """
        Live events came first; the warm-up read older ones and past them: the
        older go into history, the newer are delivered now, in order, once, and
        not again when the consumer reaches them.
        """
        client = self.connect()
        self.subscribe(client, "odin.token.*.trade")
        self.shard.delivery.deliver([self.event(o) for o in (15, 16)])
        self.warmed(range(10, 20))
        self.shard.delivery.deliver([self.event(o) for o in range(17, 22)])
        self.assertEqual(self.got(client), [15, 16, 17, 18, 19, 20, 21])
        other = self.connect()
        ack, replayed = self.recover(other, 9)
        self.assertEqual((ack["recovered"], replayed), (True, list(range(10, 22))))

    def test_live_behind_with_a_gap_is_left_alone(self):
        """Live delivery behind the warm-up's start with a gap: no backfill, no raised marks."""
        client = self.connect()
        self.subscribe(client, "odin.token.*.trade")
        self.shard.delivery.deliver([self.event(3)])
        self.warmed(range(10, 20))
        self.assertEqual(self.shard.delivery.seen.marks[(TOPIC, 0)], ("ep1", 3))
        self.shard.delivery.deliver([self.event(o) for o in range(4, 7)])
        self.assertEqual(self.got(client), [3, 4, 5, 6])
        self.reload_shard(history__recovery_hold=0)    # answered at once
        ack, _ = self.recover(self.connect(), 12)
        self.assertEqual((ack["recovered"], ack["reason"]), (False, "ahead"))

    def test_other_epoch_is_ignored(self):
        """A warm-up of another incarnation of the topic than live delivery's changes nothing."""
        self.shard.delivery.deliver([self.event(30, epoch="ep2")])
        self.warmed(range(10, 20))
        self.assertEqual(self.shard.delivery.seen.marks[(TOPIC, 0)], ("ep2", 30))
        self.assertEqual(self.shard.history.epoch(TOPIC, 0), "ep2")

    def test_rereads_are_relayed_whole(self):
        """
        The consumer's re-read of warmed offsets is not delivered here but goes
        to the hub all the same (another shard's warm-up may have stopped
        short); once the consumer is past them, only fresh events go.
        """
        published = self.relayed()
        self.shard.kafka.publish_assignment(frozenset({Partition(TOPIC, 0)}))
        self.warmed(range(10, 20))
        self.shard.delivery.on_kafka_batch([self.event(o) for o in (18, 19)])
        self.shard.delivery.on_kafka_batch([self.event(o) for o in (19, 20, 21)])
        self.shard.delivery.on_kafka_batch([self.event(o) for o in (21, 22)])
        self.assertEqual([[o for _, o in b] for b in published], [[18, 19], [19, 20, 21], [22]])

    def test_rereads_relayed_when_assigned_in_two_steps(self):
        """
        A restarted shard gets the dead shard's partitions back in two
        rebalance steps: a batch of the partition assigned first must not
        make it forget the re-read of the one assigned later, which is
        relayed whole too (the other shards' clients missed those events).
        """
        published = self.relayed()
        self.warmed(range(10, 20), partition=0)
        self.warmed(range(10, 20), partition=1)
        self.shard.kafka.publish_assignment(frozenset({Partition(TOPIC, 0)}))
        self.shard.delivery.on_kafka_batch([self.event(o, partition=0) for o in (18, 19, 20)])
        self.shard.kafka.publish_assignment(frozenset({Partition(TOPIC, 0),
                                                       Partition(TOPIC, 1)}))
        self.shard.delivery.on_kafka_batch([self.event(o, partition=1) for o in range(15, 22)])
        self.assertEqual(published, [[(0, 18), (0, 19), (0, 20)],
                                     [(1, o) for o in range(15, 22)]])

    def test_rereads_of_partitions_relayed_by_others_are_forgotten(self):
        """
        A partition another shard consumes and relays past what the warm-up
        read needs no re-read from this one: its bookkeeping goes, and
        batches are relayed as consumed (nothing re-read) from then on.
        """
        published = self.relayed()
        self.warmed(range(10, 20), partition=1)
        self.shard.delivery.deliver([self.event(o, partition=1) for o in (19, 20)])
        self.shard.kafka.publish_assignment(frozenset({Partition(TOPIC, 1)}))
        self.shard.delivery.on_kafka_batch([self.event(o, partition=1) for o in (18, 19, 20, 21)])
        self.assertEqual(published, [[(1, 21)]])

    def test_warmed_line_and_status(self):
        """The end of the warm-up is one log line; the status carries its state."""
        lines = []
        globalLogPublisher.addObserver(lines.append)
        self.addCleanup(globalLogPublisher.removeObserver, lines.append)
        self.shard.backfill.warmed(WarmupReport(WarmupState.DONE, 120, 4, 0, 0.25))
        self.assertIn("history warmed: 120 events of 4 partitions in 0.2 s",
                      [formatEvent(e) for e in lines])
        self.assertEqual(self.shard.warmup.status()["state"], "off")
