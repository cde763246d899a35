"""
Kafka ingestion of one shard: a confluent-kafka consumer in a thread of its
own, feeding batches of mapped L{Event}s to the reactor.

Threading: every call on the C{Consumer} (and every librdkafka callback,
which librdkafka serves from inside C{consume}) happens on the consumer
thread; a call from another thread while C{consume} runs blocks until it
returns. The reactor only reads the status attributes (plain, atomically
replaced values) and hands finished batch ids back through a queue.

Offsets: auto-commit is on but auto offset *store* is off. A batch's offsets
are stored only once C{on_batch} has taken it (returned, or its Deferred has
fired), and in consumption order, so a crash re-reads at most the batches
that were not yet relayed (the hub drops the duplicates).

Backpressure: at most C{max_pending} batches wait in the reactor. When that
many are out the thread waits on the batch-done queue; if the wait gets long
it pauses its partitions and keeps polling, so librdkafka does not leave the
group for exceeding C{max.poll.interval.ms}.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections import Counter
from typing import Any, Callable

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from twisted.application.service import Service
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from odin_ws.common import metrics
from odin_ws.common.config import Config
from odin_ws.common.events import Event
from odin_ws.shard.records import RecordMapper

log = Logger()

MAX_PENDING = 4
STATISTICS_INTERVAL_MS = 5000
# Seconds the thread waits at stop for batches already in the reactor, so
# their offsets are committed by close().
STOP_GRACE = 2.0


class KafkaIngest(Service):
    """
    Consume C{kafka.topics} in the node's consumer group and call
    C{on_batch(events)} in the reactor thread for each non-empty batch. If it
    returns a Deferred, the batch counts as taken when that fires (a failure
    is logged and the batch still counts as taken: a stuck offset would stop
    the partition's commits for good).
    """

    name = "kafka"

    def __init__(self, reactor: Any, config: Config, mapper: RecordMapper,
                 on_batch: Callable[[list[Event]], Deferred | None],
                 max_pending: int = MAX_PENDING):
        self._reactor = reactor
        self._config = config
        self._mapper = mapper
        self._on_batch = on_batch
        self._max_pending = max_pending
        self._thread: threading.Thread | None = None
        self._finished: Deferred | None = None
        self._stopping = threading.Event()
        self._done: queue.SimpleQueue[int] = queue.SimpleQueue()
        # Status, written by the consumer thread, read by status().
        self._state = "stopped"
        self._connected = False
        self._assigned: tuple[str, ...] = ()
        self._lag = 0
        self._last_error: str | None = None
        # Error kinds logged in the current episode (see _set_state).
        self._logged: set[str] = set()
        self._connection_error: str | None = None

    def consumer_config(self) -> dict[str, Any]:
        """The librdkafka settings, C{kafka.consumer_config} applied last."""
        c = self._config
        session = c["kafka.session_timeout_ms"]
        conf = {
            "bootstrap.servers": c["kafka.brokers"],
            "group.id": c.group_id,
            "client.id": f"odinws-{c.node_id}",
            "auto.offset.reset": c["kafka.start_offset"],
            "enable.auto.commit": True,
            "enable.auto.offset.store": False,
            "session.timeout.ms": session,
            # At most a third of the session timeout, as Kafka advises, so a
            # small session timeout (quick rebalances) keeps the member alive.
            "heartbeat.interval.ms": max(100, min(3000, session // 3)),
            "max.poll.interval.ms": c["kafka.max_poll_interval_ms"],
            "reconnect.backoff.max.ms": int(c["kafka.retry_backoff_max"] * 1000),
            "statistics.interval.ms": STATISTICS_INTERVAL_MS,
        }
        conf.update(c["kafka.consumer_config"])
        conf.update({"error_cb": self._on_error, "stats_cb": self._on_stats,
                     "logger": _LibrdkafkaLog(self)})
        return conf

    def status(self) -> dict[str, Any]:
        """Health of the consumer, for /health."""
        return {"state": self._state, "connected": self._connected,
                "assigned": list(self._assigned), "lag": self._lag,
                "last_error": self._last_error}

    def startService(self) -> None:
        Service.startService(self)
        self._stopping = threading.Event()
        self._done = queue.SimpleQueue()
        self._connected = False
        self._last_error = self._connection_error = None
        self._logged = set()
        self._state = "starting"
        try:
            consumer = Consumer(self.consumer_config())
        except (KafkaException, ValueError, TypeError) as e:
            # Bad kafka.consumer_config: nothing will retry, so say it once
            # and show it in /health rather than crash the shard's startup.
            self._state = "error"
            self._last_error = f"cannot create the Kafka consumer: {_describe(e)}"
            log.error("{error}", error=self._last_error)
            return
        self._finished = Deferred()
        loop = _ConsumerLoop(self, consumer, self._finished)
        self._thread = threading.Thread(target=loop.run,
                                        name="odinws-kafka", daemon=True)
        self._thread.start()

    def stopService(self) -> Deferred:
        """Stop consuming, leave the group; fires once the consumer is closed."""
        Service.stopService(self)
        self._stopping.set()
        finished, self._finished = self._finished, None
        thread, self._thread = self._thread, None
        if finished is None:
            if self._state != "error":
                self._state = "stopped"
            return succeed(None)
        done: Deferred = Deferred()
        # finished fires as the thread's last act, so this join is immediate.
        finished.addBoth(lambda _: thread.join())
        finished.addBoth(done.callback)
        return done

    # Reactor side of a batch.

    def _deliver(self, batch_id: int, events: list[Event]) -> None:
        d = maybeDeferred(self._on_batch, events)
        d.addErrback(lambda f: log.failure("on_batch failed for {n} events", f, n=len(events)))
        d.addBoth(lambda _: self._done.put(batch_id))

    # Consumer-thread side: status and logging (librdkafka callbacks).

    def _log(self, level: str, fmt: str, **kw: Any) -> None:
        # twisted.logger observers are not thread-safe: emit in the reactor.
        self._reactor.callFromThread(getattr(log, level), fmt, **kw)

    def _set_state(self, state: str, connected: bool) -> None:
        self._connected = connected
        metrics.KAFKA_CONNECTED.set(1 if connected else 0)
        if state == self._state or self._state == "error":
            return
        self._state = state
        if state == "running":
            # A new episode: the next error of each kind is worth a line again.
            self._logged = set()
            self._connection_error = None
            self._log("info", "Kafka consumer running (group {group})",
                      group=self._config.group_id)
        elif state == "retrying":
            self._log("warn", "Kafka brokers unreachable, retrying: {error}",
                      error=self._last_error)

    def _note_error(self, kind: str, text: str, level: str = "warn") -> None:
        metrics.KAFKA_ERRORS.labels(kind).inc()
        self._last_error = text
        if kind not in self._logged:
            self._logged.add(kind)
            self._log(level, "Kafka consumer: {error}", error=text)

    def _on_error(self, err: KafkaError) -> None:
        kind = err.name().lstrip("_").lower()
        if err.fatal():
            self._note_error(kind, f"fatal: {err.str()}", "error")
            self._set_state("error", False)
            self._stopping.set()
        elif err.code() == KafkaError._ALL_BROKERS_DOWN:
            metrics.KAFKA_ERRORS.labels(kind).inc()
            # The connection error before it says why; the retrying line shows it.
            self._last_error = self._connection_error or err.str()
            self._set_state("retrying", False)
        elif err.code() in _CONNECTION_ERRORS and self._state != "running":
            # Retried by librdkafka every backoff: the state line reports it.
            metrics.KAFKA_ERRORS.labels(kind).inc()
            self._last_error = self._connection_error = err.str()
        else:
            self._note_error(kind, err.str())

    def _on_stats(self, text: str) -> None:
        stats = json.loads(text)
        up = any(b.get("state") == "UP" for b in stats.get("brokers", {}).values())
        if up:
            self._set_state("running", True)
        elif self._state == "running":
            self._set_state("retrying", False)
        total = 0
        for topic, t in stats.get("topics", {}).items():
            for p, info in t.get("partitions", {}).items():
                if f"{topic}[{p}]" not in self._assigned:
                    continue  # librdkafka also lists the internal partition -1
                lag = _partition_lag(info)
                metrics.KAFKA_LAG.labels(topic, p).set(lag)
                total += lag
        self._lag = total


_CONNECTION_ERRORS = (KafkaError._TRANSPORT, KafkaError._RESOLVE, KafkaError._TIMED_OUT)


def _partition_lag(info: dict) -> int:
    """Records not yet taken by on_batch: high watermark - stored position."""
    hi = info.get("hi_offset", -1)
    for key in ("stored_offset", "committed_offset", "app_offset"):
        position = info.get(key, -1)
        if position >= 0 and hi >= 0:
            return max(0, hi - position)
    return 0


def _describe(e: BaseException) -> str:
    if e.args and isinstance(e.args[0], KafkaError):
        return e.args[0].str()
    return str(e)


class _LibrdkafkaLog:
    """
    librdkafka's own log lines: warnings once per facility and episode. Its
    error lines are dropped: the same errors reach error_cb.
    """

    def __init__(self, ingest: KafkaIngest):
        self._ingest = ingest

    def log(self, level: int, fmt: str, *args: Any) -> None:
        if level != 30:  # confluent-kafka maps librdkafka levels to logging's
            return
        facility = args[0] if args else "?"
        key = f"librdkafka:{facility}"
        ingest = self._ingest
        if key not in ingest._logged:
            ingest._logged.add(key)
            ingest._log("warn", "librdkafka: {line}", line=fmt % args)


class _ConsumerLoop:
    """What the consumer thread does; its state is touched by that thread only."""

    def __init__(self, ingest: KafkaIngest, consumer: Consumer, finished: Deferred):
        self.ingest = ingest
        self.consumer = consumer
        self.finished = finished
        config = ingest._config
        self.topics = list(config["kafka.topics"])
        self.poll_batch = config["kafka.poll_batch"]
        self.poll_timeout = config["kafka.poll_timeout"]
        # Pause well before librdkafka's max.poll.interval.ms would expire.
        self.pause_after = config["kafka.max_poll_interval_ms"] / 4000.0
        self.stopping = ingest._stopping
        self.done = ingest._done
        self.next_id = 0
        self.in_flight = 0
        # batch id -> [{(topic, partition): next offset}, taken?], in consumption order.
        self.pending: dict[int, list] = {}
        self.assignment: set[tuple[str, int]] = set()
        self.paused = False
        self.repause = False
        self.blocked_since: float | None = None

    def run(self) -> None:
        ingest = self.ingest
        try:
            self.consumer.subscribe(self.topics, on_assign=self.on_assign,
                                    on_revoke=self.on_revoke, on_lost=self.on_revoke)
            while not self.stopping.is_set():
                self.poll_once()
            deadline = time.monotonic() + STOP_GRACE
            while self.in_flight and time.monotonic() < deadline:
                self.take_done(0.05)
        except Exception:
            # A bug here would otherwise end ingestion silently in a thread.
            failure = Failure()
            ingest._reactor.callFromThread(log.failure, "Kafka consumer thread failed", failure)
            ingest._last_error = f"consumer thread failed: {failure.getErrorMessage()}"
            ingest._state = "error"
        finally:
            try:
                self.consumer.close()  # commits stored offsets, leaves the group
            except (KafkaException, RuntimeError) as e:
                ingest._log("warn", "Kafka consumer close: {error}", error=_describe(e))
            if ingest._state != "error":
                ingest._state = "stopped"
            ingest._connected = False
            metrics.KAFKA_CONNECTED.set(0)
            ingest._reactor.callFromThread(self.finished.callback, None)

    def poll_once(self) -> None:
        self.take_done(0)
        if self.in_flight < self.ingest._max_pending:
            self.blocked_since = None
            if self.paused:
                self.consumer.resume(self.consumer.assignment())
                self.paused = False
            self.handle(self.consumer.consume(self.poll_batch, self.poll_timeout))
            return
        now = time.monotonic()
        if self.blocked_since is None:
            self.blocked_since = now
        if not self.paused and now - self.blocked_since > self.pause_after:
            self.paused = self.repause = True
        if self.paused:
            if self.repause:  # after a rebalance, new partitions start unpaused
                self.consumer.pause(self.consumer.assignment())
                self.repause = False
            # Paused partitions return nothing; polling keeps the membership.
            self.handle(self.consumer.consume(self.poll_batch, 0))
        self.take_done(self.poll_timeout)

    def handle(self, messages: list) -> None:
        events: list[Event] = []
        offsets: dict[tuple[str, int], int] = {}
        records: Counter[str] = Counter()
        rejected: Counter[str] = Counter()
        mapper = self.ingest._mapper
        for m in messages:
            err = m.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    self.ingest._note_error(err.name().lstrip("_").lower(), err.str())
                continue
            topic, partition, offset = m.topic(), m.partition(), m.offset()
            offsets[(topic, partition)] = offset + 1
            records[topic] += 1
            result = mapper.map(topic, m.key(), m.value(), m.timestamp()[1], partition, offset)
            if isinstance(result, str):
                rejected[result] += 1
            else:
                events.append(result)
        for topic, n in records.items():
            metrics.KAFKA_RECORDS.labels(topic).inc(n)
        for reason, n in rejected.items():
            metrics.KAFKA_REJECTED.labels(reason).inc(n)
        if not offsets:
            return
        self.ingest._set_state("running", True)  # records flow: the broker is there
        batch_id = self.next_id
        self.next_id += 1
        self.pending[batch_id] = [offsets, not events]
        if events:
            self.in_flight += 1
            self.ingest._reactor.callFromThread(self.ingest._deliver, batch_id, events)
        else:
            self.store_taken()

    def take_done(self, timeout: float) -> None:
        """Collect batches the reactor has taken (waiting up to C{timeout})."""
        try:
            batch_id = self.done.get(timeout=timeout) if timeout else self.done.get_nowait()
            while True:
                entry = self.pending.get(batch_id)
                if entry is not None and not entry[1]:
                    entry[1] = True
                    self.in_flight -= 1
                batch_id = self.done.get_nowait()
        except queue.Empty:
            pass
        self.store_taken()

    def store_taken(self) -> None:
        """Store the offsets of the taken batches that no untaken batch precedes."""
        merged: dict[tuple[str, int], int] = {}
        for batch_id in list(self.pending):
            offsets, taken = self.pending[batch_id]
            if not taken:
                break
            merged.update(offsets)
            del self.pending[batch_id]
        tps = [TopicPartition(t, p, o) for (t, p), o in merged.items()
               if (t, p) in self.assignment]
        if tps:
            try:
                self.consumer.store_offsets(offsets=tps)
            except KafkaException as e:  # e.g. revoked in the same poll
                self.ingest._note_error("store_offsets", _describe(e))

    def on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.assignment.update((tp.topic, tp.partition) for tp in partitions)
        self._publish_assignment()
        self.repause = self.paused
        self.ingest._set_state("running", True)

    def on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Store what has been taken so the commit librdkafka makes on revoke
        # includes it, then forget the rest for these partitions: their new
        # owner re-reads from the committed offset.
        self.take_done(0)
        gone = {(tp.topic, tp.partition) for tp in partitions}
        for offsets, _ in self.pending.values():
            for tp in gone & offsets.keys():
                del offsets[tp]
        self.assignment -= gone
        self._publish_assignment()
        for topic, partition in gone:
            try:
                metrics.KAFKA_LAG.remove(topic, str(partition))
            except KeyError:
                pass

    def _publish_assignment(self) -> None:
        self.ingest._assigned = tuple(sorted(f"{t}[{p}]" for t, p in self.assignment))
