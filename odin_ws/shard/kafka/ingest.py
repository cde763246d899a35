"""
Kafka ingestion of one shard: a confluent-kafka consumer in a thread of its
own (L{odin_ws.shard.kafka.consumerloop}), feeding batches of mapped L{Event}s to
the reactor. This module owns the service's lifecycle and the consumer's
status; the loop reports to it through the small method API of L{KafkaIngest}
marked "consumer thread", and never touches its attributes. The consumer's
librdkafka settings are L{odin_ws.shard.kafka.consumerconfig}'s; what its
statistics say (a broker not answering, lag, stalled partitions) is read by
L{odin_ws.shard.kafka.consumerstats}, and what its errors mean for the status
by L{odin_ws.shard.kafka.consumererrors}, both parts of L{KafkaIngest}.

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

import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import Consumer, KafkaException
from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from odin_ws.common import metrics
from odin_ws.common.events import Event, Partition
from odin_ws.common.logs import audit
from odin_ws.common.settings import Settings
from odin_ws.shard.kafka.consumerconfig import (
    STATISTICS_INTERVAL_MS,
    LibrdkafkaLog,
    incremental,
    librdkafka_settings,
)
from odin_ws.shard.kafka.consumererrors import ConsumerErrors
from odin_ws.shard.kafka.consumerloop import STOP_GRACE, ConsumerLoop
from odin_ws.shard.kafka.consumerstats import ConsumerStatistics, IngestState
from odin_ws.shard.kafka.consumerthread import ConsumerThread
from odin_ws.shard.kafka.errors import describe_error
from odin_ws.shard.kafka.handover import Handover
from odin_ws.shard.kafka.incarnations import TopicIncarnations, admin_config
from odin_ws.shard.kafka.progress import PartitionProgress
from odin_ws.shard.kafka.records import RecordMapper
from odin_ws.shard.kafka.topiclayout import TopicLayout

log = Logger()

MAX_PENDING = 4
# Seconds stopService waits for the consumer thread beyond its grace for
# batches in flight: close() blocks for minutes on a broker that accepts
# connections but answers nothing (measured with a SIGSTOPped Tansu), and the
# supervisor SIGKILLs a shard kill_timeout (5 s) after SIGTERM.
CLOSE_TIMEOUT = 1.5
#: Seconds a broker connection with requests waiting may receive nothing
#: before the consumer counts as unresponsive (at most the session timeout).
UNANSWERED_AFTER = 3.0


class KafkaIngest(ConsumerStatistics, ConsumerErrors, Service):
    """
    Consume C{kafka.topics} in the node's consumer group and call
    C{on_batch(events)} in the reactor thread for each non-empty batch (the
    batches queued behind a busy reactor joined into one call, up to
    C{kafka.poll_batch} events: L{Handover}). If it returns a Deferred, the
    batches count as taken when that fires (a failure
    is logged and the batch still counts as taken: a stuck offset would stop
    the partition's commits for good).

    A broker that accepts connections but answers nothing leaves librdkafka's
    broker state "UP" for minutes: the status says "unresponsive" and not
    connected once a broker has had requests waiting without any answer for
    L{UNANSWERED_AFTER} (at most a session timeout), or when the consumer's
    statistics stop coming for a session timeout.

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
        self._handover = Handover(reactor, on_batch, self._done, settings.kafka.poll_batch)
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
        #: Seconds the consumer's statistics may stop coming (beyond three
        #: intervals: the consumer thread out of consume()) before it counts
        #: as unresponsive: a session timeout, a member's own bound.
        self.unresponsive_after = max(k.session_timeout_ms / 1000.0,
                                      k.fetch_wait_max_ms / 1000.0 + 1.0)
        #: Seconds a broker connection may leave requests unanswered before
        #: it counts as unresponsive: fetches are held at most
        #: fetch_wait_max_ms, so well before a session timeout (a broker
        #: pause shows in /health while it lasts: docs/operations.md).
        self.unanswered_after = max(min(k.session_timeout_ms / 1000.0, UNANSWERED_AFTER),
                                    k.fetch_wait_max_ms / 1000.0 + 1.0)
        # Statistics: how often they come, when they last came (reactor time).
        self._stats_interval = k.consumer_config.get(
            "statistics.interval.ms", STATISTICS_INTERVAL_MS) / 1000.0
        self._stats_at = reactor.seconds()

    def consumer_config(self) -> dict[str, Any]:
        """The librdkafka settings (L{librdkafka_settings}) with this ingest's callbacks."""
        conf = librdkafka_settings(self._settings, self.instance_id)
        conf.update({"error_cb": self.on_error, "stats_cb": self._on_stats,
                     "logger": LibrdkafkaLog(self.log_once)})
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
        self._handover = Handover(self._reactor, self._handover.deliver, self._done,
                                  self._settings.kafka.poll_batch)
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
        # the topics' known identities (and which were renewed), the
        # partition counts first seen and what "latest" counts from. (A
        # replacement with its own: a topic renewed before it started was
        # read from the new log's first record since the replacement, by
        # time; measured, 150 events lost after a broker was replaced,
        # /health "ok".)
        incarnations = TopicIncarnations(admin_config(conf))
        layout = TopicLayout(admin_config(conf), self._settings.kafka.topics)
        started_ms = int(time.time() * 1000)

        def make_loop(consumer: Consumer, first_id: int) -> ConsumerLoop:
            return ConsumerLoop(self, consumer, self._mapper, self._settings.kafka,
                                self._stopping, self._done, self._max_pending, incarnations,
                                cooperative=incremental(conf), layout=layout,
                                fatal=self._fatal, first_id=first_id, rejoin=self._rejoin,
                                started_ms=started_ms)

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

    # Consumer thread: the loop's API.

    def hand_over(self, batch_id: int, events: list[Event]) -> None:
        """
        Consumer thread: give a batch to the reactor; its id comes back on
        the done queue. Batches queued behind a busy reactor are delivered
        together (L{Handover}).
        """
        self._handover.give(batch_id, events)

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

    def _log(self, level: str, fmt: str, **kw: Any) -> None:
        # twisted.logger observers are not thread-safe: emit in the reactor.
        self._reactor.callFromThread(getattr(log, level), fmt, **kw)
