"""
Kafka ingestion of one shard: a confluent-kafka consumer in a thread of its
own (L{odin_ws.shard.kafka.consumerloop}), feeding batches of mapped L{Event}s to
the reactor. This module owns the service's lifecycle and the consumer's
status; the loop reports to it through the small method API of L{KafkaIngest}
marked "consumer thread", and never touches its attributes.

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

import enum
import json
import queue
import threading
from collections.abc import Callable
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException
from twisted.application.service import Service
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from odin_ws.common import metrics
from odin_ws.common.events import Event, Partition
from odin_ws.common.logs import audit
from odin_ws.common.settings import Settings
from odin_ws.shard.kafka.consumerloop import STOP_GRACE, ConsumerLoop
from odin_ws.shard.kafka.consumerthread import ConsumerThread
from odin_ws.shard.kafka.errors import describe_error
from odin_ws.shard.kafka.incarnations import TopicIncarnations, admin_config
from odin_ws.shard.kafka.progress import PartitionProgress, position_of
from odin_ws.shard.kafka.records import RecordMapper
from odin_ws.shard.kafka.topiclayout import TopicLayout

log = Logger()

MAX_PENDING = 4
# librdkafka statistics (lag, broker states, a hung broker) once a second:
# parsing them costs ~0.1 ms.
STATISTICS_INTERVAL_MS = 1000
# Seconds stopService waits for the consumer thread beyond its grace for
# batches in flight: close() blocks for minutes on a broker that accepts
# connections but answers nothing (measured with a SIGSTOPped Tansu), and the
# supervisor SIGKILLs a shard kill_timeout (5 s) after SIGTERM.
CLOSE_TIMEOUT = 1.5
#: librdkafka's incremental (cooperative) assignor.
COOPERATIVE = "cooperative-sticky"


class IngestState(enum.StrEnum):
    """The consumer's state in C{/health} (a string there: the values are the API)."""

    STOPPED = "stopped"
    STARTING = "starting"
    RUNNING = "running"
    RETRYING = "retrying"
    UNRESPONSIVE = "unresponsive"
    ERROR = "error"


class KafkaIngest(Service):
    """
    Consume C{kafka.topics} in the node's consumer group and call
    C{on_batch(events)} in the reactor thread for each non-empty batch. If it
    returns a Deferred, the batch counts as taken when that fires (a failure
    is logged and the batch still counts as taken: a stuck offset would stop
    the partition's commits for good).

    A broker that accepts connections but answers nothing leaves librdkafka's
    broker state "UP" for minutes: the status says "unresponsive" and not
    connected once a broker has had requests waiting without any answer for
    a session timeout (a member's own bound for the coordinator), or when the
    consumer's statistics stop coming.

    @param settings: the process's L{Settings}.
    @param shard: this shard's index: with C{kafka.static_membership} its
        group instance id is C{<node_id>-shard<index>} (L{instance_id}).
    """

    name = "kafka"  # type: ignore[assignment]  # Twisted types Service.name as None

    def __init__(self, reactor: Any, settings: Settings, shard: int, mapper: RecordMapper,
                 on_batch: Callable[[list[Event]], Deferred | None],
                 max_pending: int = MAX_PENDING):
        self._reactor = reactor
        self._settings = settings
        self._shard = shard
        self._mapper = mapper
        self._on_batch = on_batch
        self._max_pending = max_pending
        self._thread: threading.Thread | None = None
        self._finished: Deferred | None = None
        self._stopping = threading.Event()
        #: Set when librdkafka declared the consumer fatally failed (replace it).
        self._fatal = threading.Event()
        #: Set by L{rejoin}: the consumer thread leaves the group and joins again.
        self._rejoin = threading.Event()
        #: Partition count of each configured topic, as the consumer's metadata says.
        self._partitions: dict[str, int] = {}
        self._done: queue.SimpleQueue[int] = queue.SimpleQueue()
        # Status, written by the consumer thread, read by status().
        self._state = IngestState.STOPPED
        self._connected = False
        self._assigned: frozenset[Partition] = frozenset()
        self._lag = 0
        #: Held partitions behind and not moving (L{PartitionProgress}).
        self._progress = PartitionProgress()
        #: Those stalled for kafka.progress_grace, with the seconds (replaced whole).
        self._stalled: dict[Partition, float] = {}
        self._stall_rejoined_at: float | None = None
        #: Rejoins asked in the current stall (the next step replaces the consumer).
        self._stall_rejoins = 0
        #: Whether the consumer loop has paused its partitions (back-pressure).
        self._paused = False
        #: Why the consumer thread is asked to rejoin its group (its log line).
        self.rejoin_reason = ""
        self._last_error: str | None = None
        #: Configured topics the brokers said do not exist (until seen again).
        self._missing: frozenset[str] = frozenset()
        #: Reactor time the consumer was last known connected (or started).
        self._connected_at = self._unassigned_at = reactor.seconds()
        # Error kinds logged in the current episode (see _set_state).
        self._logged: set[str] = set()
        self._connection_error: str | None = None
        k = self._settings.kafka
        #: Seconds a broker may leave requests unanswered (fetches are held
        #: at most fetch_wait_max_ms) before it counts as unresponsive.
        self.unresponsive_after = max(k.session_timeout_ms / 1000.0,
                                      k.fetch_wait_max_ms / 1000.0 + 1.0)
        # Statistics: how often they come, when they last came (reactor time).
        self._stats_interval = k.consumer_config.get(
            "statistics.interval.ms", STATISTICS_INTERVAL_MS) / 1000.0
        self._stats_at = reactor.seconds()

    def consumer_config(self) -> dict[str, Any]:
        """The librdkafka settings, C{kafka.consumer_config} applied last."""
        k = self._settings.kafka
        session = k.session_timeout_ms
        conf: dict[str, Any] = {
            "bootstrap.servers": k.brokers,
            "group.id": self._settings.group_id,
            "client.id": f"odinws-{self._settings.node_id}",
            # Where a partition without a usable offset starts is the consumer
            # loop's choice (kafka.start_offset, but only once the topic's
            # identity is known: ConsumerLoop.offsets_lost), not librdkafka's.
            "auto.offset.reset": "error",
            "enable.auto.commit": True,
            "enable.auto.offset.store": False,
            # librdkafka's default, stated: records of aborted transactions
            # are never delivered, nor those of open ones until they commit.
            "isolation.level": "read_committed",
            "max.poll.interval.ms": k.max_poll_interval_ms,
            "reconnect.backoff.max.ms": int(k.retry_backoff_max * 1000),
            "statistics.interval.ms": STATISTICS_INTERVAL_MS,
            "fetch.wait.max.ms": k.fetch_wait_max_ms,
            # Partitions added and topics recreated are seen at a refresh.
            "topic.metadata.refresh.interval.ms": k.metadata_refresh_ms,
        }
        if k.static_membership:
            conf["group.instance.id"] = self.instance_id
        if k.group_protocol == "consumer":
            # KIP-848: the broker owns the session, the heartbeat and the
            # assignor; librdkafka refuses the classic settings for them.
            conf["group.protocol"] = "consumer"
        else:
            conf["session.timeout.ms"] = session
            conf["heartbeat.interval.ms"] = heartbeat_interval(session)
            if k.cooperative_rebalance:
                # A shard's crash or restart then moves only its own partitions:
                # the others' clients see no pause (kafka.cooperative_rebalance).
                conf["partition.assignment.strategy"] = COOPERATIVE
        conf.update(k.consumer_config)
        conf.update({"error_cb": self.on_error, "stats_cb": self._on_stats,
                     "logger": _LibrdkafkaLog(self)})
        return conf

    @property
    def instance_id(self) -> str:
        """
        This shard's static group instance id: unique in the node's group
        (one per shard index), stable across the shard's restarts.
        """
        return f"{self._settings.node_id}-shard{self._shard}"

    def status(self) -> dict[str, Any]:
        """Health of the consumer, for /health."""
        state, connected, error = self._state, self._connected, self._last_error
        now = self._reactor.seconds()
        if connected and self._stats_interval:
            silent = now - self._stats_at
            if silent > self.unresponsive_after + 3 * self._stats_interval:
                # The consumer thread has not been in consume() for that long.
                state, connected = IngestState.UNRESPONSIVE, False
                error = f"no consumer statistics for {silent:.0f}s"
                metrics.KAFKA_CONNECTED.set(0)
        return {"state": state, "connected": connected,
                "assigned": sorted(p.label() for p in self._assigned), "lag": self._lag,
                # Held, with records to read, not read (kafka.progress_grace).
                "stalled": {p.label(): round(seconds, 1)
                            for p, seconds in sorted(self._stalled.items())},
                # Per topic: its partition count and those assigned here, for
                # the parent's check that every partition has a shard
                # (odin_ws.parent.coverage).
                "topics": self._topics_status(),
                "last_error": error, "missing_topics": sorted(self._missing),
                # How long no broker has answered (the node's /health 503s
                # past kafka.unreachable_grace on every shard).
                "disconnected_for": 0.0 if connected else round(now - self._connected_at, 1),
                # How long it has had no partition (a rebalance, a stalled
                # group): /health 503s past the grace when no shard has one.
                "unassigned_for": 0.0 if self._assigned else round(now - self._unassigned_at, 1)}

    def _topics_status(self) -> dict[str, dict[str, Any]]:
        held: dict[str, list[int]] = {}
        for topic, partition in sorted(self._assigned):
            held.setdefault(topic, []).append(partition)
        return {topic: {"partitions": self._partitions.get(topic, 0),
                        "assigned": held.get(topic, [])}
                for topic in sorted(self._partitions.keys() | held.keys())}

    def rejoin(self) -> bool:
        """
        Have the consumer leave its group and join again (the parent found
        partitions no shard of the node holds: L{odin_ws.parent.coverage}),
        which makes the group assign every partition anew. False when no
        consumer runs to do it.
        """
        if self._thread is None or self._state not in (IngestState.RUNNING, IngestState.STARTING):
            return False
        self.rejoin_reason = "partitions of the subscribed topics are held by no shard of this node"
        self._rejoin.set()
        return True

    @property
    def assigned(self) -> frozenset[Partition]:
        """The assigned partitions (replaced as a whole when the assignment changes)."""
        return self._assigned

    def startService(self) -> None:
        Service.startService(self)
        self._stopping = threading.Event()
        self._done = queue.SimpleQueue()
        self._connected = False
        self._last_error = self._connection_error = None
        self._missing = frozenset()
        self._connected_at = self._unassigned_at = self._reactor.seconds()
        self._logged = set()
        self._state = IngestState.STARTING
        conf = self.consumer_config()
        self._stats_at = self._reactor.seconds()
        try:
            consumer = Consumer(conf)
        except (KafkaException, ValueError, TypeError) as e:
            # Bad kafka.consumer_config: nothing will retry, so say it once
            # and show it in /health rather than crash the shard's startup.
            self._state = IngestState.ERROR
            self._last_error = f"cannot create the Kafka consumer: {describe_error(e)}"
            log.error("{error}", error=self._last_error)
            return
        self._finished = Deferred()
        self._fatal = threading.Event()
        self._rejoin = threading.Event()
        # One of each for the consumers this thread runs: a replacement keeps
        # the topics' known identities and the partition counts first seen.
        incarnations = TopicIncarnations(admin_config(conf))
        layout = TopicLayout(admin_config(conf), self._settings.kafka.topics)

        def make_loop(consumer: Consumer, first_id: int) -> ConsumerLoop:
            return ConsumerLoop(self, consumer, self._mapper, self._settings.kafka,
                                self._stopping, self._done, self._max_pending, incarnations,
                                cooperative=_incremental(conf), layout=layout,
                                fatal=self._fatal, first_id=first_id, rejoin=self._rejoin)

        body = ConsumerThread(self, consumer, lambda: Consumer(conf), make_loop,
                              self._stopping, self._fatal, self._finished)
        self._thread = threading.Thread(target=body.run, name="odinws-kafka", daemon=True)
        self._thread.start()

    def stopService(self) -> Deferred:
        """Stop consuming, leave the group; fires once the consumer is closed."""
        Service.stopService(self)
        self._stopping.set()
        finished, self._finished = self._finished, None
        thread, self._thread = self._thread, None
        if finished is None:
            if self._state != IngestState.ERROR:
                self._state = IngestState.STOPPED
            return succeed(None)
        done: Deferred = Deferred()

        def closed(_: object) -> None:
            # finished fires as the thread's last act, so this join is immediate
            # (a finished Deferred means the thread was started).
            if thread is not None:
                thread.join()
            if timer.active():
                timer.cancel()
                done.callback(None)

        def give_up() -> None:
            log.warn("Kafka consumer not closed within {t:g}s (brokers unreachable or "
                     "not answering): stopping without it; what it had not committed "
                     "is read again at the next start", t=STOP_GRACE + CLOSE_TIMEOUT)
            done.callback(None)

        timer = self._reactor.callLater(STOP_GRACE + CLOSE_TIMEOUT, give_up)
        finished.addBoth(closed)
        return done

    # Reactor side of a batch.

    def _deliver(self, batch_id: int, events: list[Event]) -> None:
        d = maybeDeferred(self._on_batch, events)
        d.addErrback(lambda f: log.failure("on_batch failed for {n} events", f, n=len(events)))
        d.addBoth(lambda _: self._done.put(batch_id))

    # Consumer thread: the loop's API.

    def hand_over(self, batch_id: int, events: list[Event]) -> None:
        """Consumer thread: give a batch to the reactor; its id comes back on the done queue."""
        self._reactor.callFromThread(self._deliver, batch_id, events)

    def broker_reached(self) -> None:
        """Consumer thread: records or an assignment arrived, so the broker is there."""
        if self._state != IngestState.UNRESPONSIVE:  # other brokers may answer; stats decide
            self._set_state(IngestState.RUNNING, True)

    def publish_assignment(self, assigned: frozenset[Partition]) -> None:
        """
        Consumer thread: the partitions now assigned. Partitions coming in
        mean the brokers answer and the topics exist: an earlier error no
        longer holds, and is cleared (it stayed in /health before).
        """
        if assigned - self._assigned:
            self._last_error = None
        if not assigned and self._assigned:
            self._unassigned_at = self._reactor.seconds()
        self._assigned = assigned

    def publish_missing(self, topics: frozenset[str]) -> None:
        """Consumer thread: the configured topics the brokers say do not exist."""
        self._missing = topics

    def pausing(self, paused: bool) -> None:
        """
        Consumer thread: the loop paused (or resumed) its partitions for
        back-pressure; a paused partition is behind on purpose, not stalled.
        """
        self._paused = paused
        if paused:
            self._progress.clear()

    def note_error(self, kind: str, text: str, level: str = "warn") -> None:
        """Consumer thread: count an error by kind; log its first occurrence per episode."""
        metrics.KAFKA_ERRORS.labels(kind).inc()
        self._last_error = text
        self.log_once(kind, "Kafka consumer: {error}", level, error=text)

    def fatal(self, kind: str, text: str) -> None:
        """
        Consumer thread: the consumer cannot go on (librdkafka's fatal state:
        it would return nothing more, its assignment still shown); end its
        loop so the thread replaces it (L{ConsumerThread}), and show why in
        the status meanwhile.
        """
        if "group.instance.id" in text:
            # FENCED_INSTANCE_ID: another consumer joined with this shard's id.
            text += (f" (instance id {self.instance_id}: another process joined the group "
                     f"{self._settings.group_id} with it; node_id must be unique among the "
                     f"nodes of kafka.group {self._settings.kafka.group!r})")
        self.note_error(kind, f"fatal: {text}", "error")
        self._set_state(IngestState.ERROR, False)
        # It reads nothing more: no partitions to show, whatever it holds.
        self._assigned = frozenset()
        self._fatal.set()

    def replacing(self, delay: float) -> None:
        """Consumer thread: the failed consumer is closed; a new one follows in C{delay} s."""
        self._log("warn", "Kafka consumer failed ({error}): replacing the Kafka consumer in "
                  "{delay:g}s", error=self._last_error, delay=delay)

    def replaced(self) -> None:
        """
        Consumer thread: a new consumer replaces the failed one; it starts
        like the first did (the error stays shown until partitions come in).
        """
        self._state = IngestState.STARTING
        self._connected = False
        self._logged = set()

    def log_once(self, key: str, fmt: str, level: str = "warn", **kw: Any) -> None:
        """Consumer thread: log a line once per kind (C{key}) and episode."""
        if key not in self._logged:
            self._logged.add(key)
            self._log(level, fmt, **kw)

    def log(self, level: str, fmt: str, **kw: Any) -> None:
        """Consumer thread: log a line (emitted from the reactor thread)."""
        self._log(level, fmt, **kw)

    def audit(self, fmt: str, **kw: Any) -> None:
        """Consumer thread: write a line to the audit stream (a warning)."""
        self._reactor.callFromThread(audit.warn, fmt, **kw)

    def thread_failed(self, failure: Failure) -> None:
        """Consumer thread: the loop died of a bug; show it in the status."""
        self._reactor.callFromThread(log.failure, "Kafka consumer thread failed", failure)
        self._last_error = f"consumer thread failed: {failure.getErrorMessage()}"
        self._state = IngestState.ERROR

    def consumer_closed(self, finished: Deferred) -> None:
        """Consumer thread, its last act: the consumer is closed; fire C{finished}."""
        if self._state != IngestState.ERROR:
            self._state = IngestState.STOPPED
        self._connected = False
        self._assigned = frozenset()
        metrics.KAFKA_CONNECTED.set(0)
        self._reactor.callFromThread(finished.callback, None)

    # Consumer thread: status (librdkafka callbacks, served inside consume()).

    def _log(self, level: str, fmt: str, **kw: Any) -> None:
        # twisted.logger observers are not thread-safe: emit in the reactor.
        self._reactor.callFromThread(getattr(log, level), fmt, **kw)

    def _set_state(self, state: IngestState, connected: bool) -> None:
        self._connected = connected
        if connected:
            self._connected_at = self._reactor.seconds()
        metrics.KAFKA_CONNECTED.set(1 if connected else 0)
        if state == self._state or self._state == IngestState.ERROR:
            return
        self._state = state
        if state == IngestState.RUNNING:
            # A new episode: the next error of each kind is worth a line
            # again, and the error that kept it from running no longer holds.
            self._logged = set()
            self._last_error = self._connection_error = None
            self._log("info", "Kafka consumer running (group {group})",
                      group=self._settings.group_id)
        elif state == IngestState.RETRYING:
            self._log("warn", "Kafka brokers unreachable, retrying: {error}",
                      error=self._last_error)
        elif state == IngestState.UNRESPONSIVE:
            self._log("warn", "Kafka broker not answering: {error}", error=self._last_error)

    def on_error(self, err: KafkaError) -> None:
        """
        Consumer thread: an error from librdkafka, through error_cb or as a
        message from consume(): classified once (fatal, all brokers down,
        a connection error while retrying or while running, other).
        """
        kind = err.name().lstrip("_").lower()
        if err.fatal():
            self.fatal(kind, err.str())
        elif err.code() == KafkaError._ALL_BROKERS_DOWN:
            metrics.KAFKA_ERRORS.labels(kind).inc()
            # The connection error before it says why; the retrying line shows it.
            self._last_error = self._connection_error or err.str()
            self._set_state(IngestState.RETRYING, False)
        elif err.code() in _CONNECTION_ERRORS and self._state != IngestState.RUNNING:
            # Retried by librdkafka every backoff: the state line reports it.
            metrics.KAFKA_ERRORS.labels(kind).inc()
            self._last_error = self._connection_error = err.str()
        elif err.code() in _CONNECTION_ERRORS:
            # Running: one broker connection failed (or a report of the outage
            # arrived after the consumer was back), while the statistics say
            # brokers answer. Counted and logged once; not the status's error,
            # which would then outlive what it says (issue 28).
            metrics.KAFKA_ERRORS.labels(kind).inc()
            self.log_once(kind, "Kafka consumer: {error}", error=err.str())
        else:
            self.note_error(kind, err.str())

    def _on_stats(self, text: str) -> None:
        stats = json.loads(text)
        self._stats_at = self._reactor.seconds()
        up = False
        hung = None
        bound_us = self.unresponsive_after * 1e6
        for b in stats.get("brokers", {}).values():
            if b.get("state") != "UP":
                continue
            # The group coordinator's connection (source "logical") may hold a
            # JoinGroup for a whole rebalance: only real broker connections,
            # where fetches are answered within fetch_wait_max_ms, count.
            if (b.get("source") != "logical" and b.get("waitresp_cnt", 0) > 0
                    and b.get("rxidle", -1) >= bound_us):
                hung = b
            else:
                up = True
        if hung is not None:
            self._last_error = (f"broker {hung.get('nodename') or hung.get('name')} has not "
                                f"answered for {hung['rxidle'] / 1e6:.0f}s "
                                f"({hung['waitresp_cnt']} requests waiting)")
            self._set_state(IngestState.UNRESPONSIVE, False)
        elif up:
            self._set_state(IngestState.RUNNING, True)
        elif self._state in (IngestState.RUNNING, IngestState.UNRESPONSIVE):
            self._set_state(IngestState.RETRYING, False)
        total = 0
        assigned = self._assigned
        # Progress is watched while the consumer reads: not while it cannot
        # reach a broker, nor while the loop pauses its partitions.
        watching = self._state == IngestState.RUNNING and not self._paused
        counts = dict(self._partitions)
        configured = set(self._settings.kafka.topics)
        for topic, t in stats.get("topics", {}).items():
            if topic in configured:
                # librdkafka lists every partition its metadata knows of a
                # topic it holds some of (and the internal partition -1).
                counts[topic] = 1 + max((int(p) for p in t.get("partitions", {})), default=-1)
            for p, info in t.get("partitions", {}).items():
                if Partition(topic, int(p)) not in assigned:
                    continue  # librdkafka also lists the internal partition -1
                lag = _partition_lag(info)
                metrics.KAFKA_LAG.labels(topic, p).set(lag)
                total += lag
                if watching:
                    self._progress.observe(Partition(topic, int(p)), position_of(info),
                                           info.get("hi_offset", -1), self._stats_at)
        if counts != self._partitions:
            self._partitions = counts  # replaced whole: the reactor reads it
        self._lag = total
        if watching:
            self._progress.keep_only(assigned)
        else:
            self._progress.clear()
        self._check_progress(self._stats_at)

    def _check_progress(self, now: float) -> None:
        """
        Consumer thread, after each statistics report: partitions stalled
        for the grace are shown and counted, and make the consumer rejoin
        its group; still stalled a grace after that, the consumer is
        replaced (shard/kafka/progress.py).
        """
        grace = self._settings.kafka.progress_grace
        stalled = self._progress.stalled(now, grace)
        metrics.KAFKA_STALLED.set(len(stalled))
        if stalled.keys() - self._stalled.keys():
            self._log("warn", "Kafka partitions held by this shard have records to read and "
                      "have not been read for {seconds:.0f}s: {partitions}",
                      seconds=max(stalled.values()),
                      partitions=", ".join(p.label() for p in sorted(stalled)))
        self._stalled = stalled
        if not stalled:
            # A rejoin takes the partitions away and back: the stall it did
            # not cure shows again a grace later. Cured is a second grace
            # without one.
            if self._stall_rejoined_at is None or now - self._stall_rejoined_at > 2 * grace:
                self._stall_rejoins = 0
            return
        if self._stall_rejoined_at is not None and now - self._stall_rejoined_at < grace:
            return
        labels = ", ".join(p.label() for p in sorted(stalled))
        self._stall_rejoined_at = now
        if self._stall_rejoins == 0:
            # First the group: it assigns the partitions anew.
            self._stall_rejoins += 1
            self.rejoin_reason = f"partitions held by this shard are not read: {labels}"
            self._rejoin.set()
            return
        # Still not read after a rejoin (Apache Kafka, broker replaced: the
        # consumer's own state of the partition is stuck, measured): a new
        # consumer, as after librdkafka's fatal errors (L{ConsumerThread}).
        self._stall_rejoins = 0
        self.note_error("stalled", f"partitions not read after a rejoin: {labels}; "
                        "replacing the consumer")
        self._assigned = frozenset()
        self._progress.clear()
        self._stalled = {}
        metrics.KAFKA_STALLED.set(0)
        self._fatal.set()


_CONNECTION_ERRORS = (KafkaError._TRANSPORT, KafkaError._RESOLVE, KafkaError._TIMED_OUT)


def _partition_lag(info: dict) -> int:
    """Records not yet taken by on_batch: high watermark - stored position."""
    hi = info.get("hi_offset", -1)
    for key in ("stored_offset", "committed_offset", "app_offset"):
        position = info.get(key, -1)
        if position >= 0 and hi >= 0:
            return max(0, hi - position)
    return 0


def heartbeat_interval(session_ms: int) -> int:
    """
    librdkafka's heartbeat.interval.ms for a session of C{session_ms}: a
    twentieth of it, 100 ms to 1 s.

    librdkafka times the session on its own side too, from the last answered
    heartbeat: a broker that answers nothing for P seconds (a pause, a GC
    stall, SIGSTOP) makes the member give up its partitions and rejoin
    (C{SESSTMOUT}) once P plus the age of that answer passes the session. At
    a third of the session (the interval before), a pause of two thirds of
    it could do that: measured on Apache Kafka 4.4, 10 s session, an 8 s
    SIGSTOP of the broker, both shards gave up their partitions as it came
    back; without static membership they rejoined as new members and the
    broker held the join for the old members, so nothing was read for a
    further 10 s (18 s in all). At a twentieth (0.5 s) the same pause, and a
    9 s one, passed with every partition kept, events flowing 0.02-0.06 s
    after the broker came back. Two heartbeats a second per shard are
    nothing to a broker.
    """
    return max(100, min(1000, session_ms // 20))


def _incremental(conf: dict[str, Any]) -> bool:
    """Whether librdkafka rebalances incrementally with these settings (see L{ConsumerLoop})."""
    return (conf.get("group.protocol") == "consumer"
            or conf.get("partition.assignment.strategy") == COOPERATIVE)


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
        self._ingest.log_once(f"librdkafka:{facility}", "librdkafka: {line}",
                              line=fmt % args)
