"""
The warm-up of a starting shard: read the recent past of every partition of
every configured topic back from Kafka into the history and the snapshot
cache (L{odin_ws.shard.history.store}), so recovery and snapshots work right
after a start, a crash or a deploy (docs/operations.md, "History, recovery
and snapshots").

A consumer of its own, outside the node's group (C{assign()}, nothing
committed, nothing subscribed), in a thread of its own
(L{odin_ws.shard.kafka.warmread}: what it reads, and its bounds). Each
partition goes to the reactor (C{callFromThread}) as one L{WarmedPartition}
once it is read (or when time runs out: what was read so far, which is
still every record from its start to where it stopped).

The shard serves clients meanwhile: it only joins what it can prove to be
continuous with live delivery (L{odin_ws.shard.service.Shard.backfill}).

Later, a partition that reaches the shard with nothing known of its past (a
later rebalance; L{odin_ws.shard.delivery.warmgate}) is read back the same
way, alone (L{HistoryWarmup.warm}): one run at a time, partitions asked for
meanwhile read by the next.
"""

from __future__ import annotations

import functools
import threading
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from confluent_kafka import Consumer
from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from odin_ws.common import metrics
from odin_ws.common.logs import silenced
from odin_ws.common.settings import Settings
from odin_ws.shard.kafka.incarnations import TopicIncarnations, admin_config
from odin_ws.shard.kafka.records import RecordMapper
from odin_ws.shard.kafka.warmread import REQUEST_TIMEOUT, WarmedPartition, WarmRead, WarmupReport, WarmupState

log = Logger()

#: Seconds stopService waits for the thread (a request in flight ends
#: within its own bound; the consumer's close is not waited for beyond this).
STOP_TIMEOUT = 2.0

# librdkafka's own lines (connection refused while the broker starts...):
# the warm-up reports its outcome in one line of its own.
_quiet = silenced("odinws.warmup.librdkafka")


class HistoryWarmup(Service):
    """
    Read back the recent past once, at start.

    @param consumer_config: the node consumer's librdkafka settings; only
        how to reach the brokers is taken from them.
    @param on_partition: called in the reactor with each L{WarmedPartition}.
    @param on_done: called in the reactor with the L{WarmupReport} at the end.
    @param on_late: called in the reactor with the partitions of a L{warm}
        and its L{WarmupReport} once that run ended.
    """

    name = "warmup"  # type: ignore[assignment]  # Twisted types Service.name as None

    def __init__(self, reactor: Any, settings: Settings, mapper: RecordMapper,
                 consumer_config: dict[str, Any],
                 on_partition: Callable[[WarmedPartition], None],
                 on_done: Callable[[WarmupReport], None],
                 consumer_factory: Callable[[dict], Any] = Consumer,
                 incarnations: Any = None,
                 on_late: Callable[[set[tuple[str, int]], WarmupReport], None] | None = None):
        self._reactor = reactor
        self._settings = settings
        self._mapper = mapper
        self._on_partition = on_partition
        self._on_done = on_done
        self._on_late = on_late
        # Partitions asked for by warm() and not read yet (the next run's).
        self._late: set[tuple[str, int]] = set()
        self._late_reading = False
        #: The late runs, for the shard's status (L{late_status}).
        self.late = LateRuns(reactor)
        self._consumer_factory = consumer_factory
        conf = {k: v for k, v in admin_config(consumer_config).items() if k != "logger"}
        self._incarnations = incarnations or TopicIncarnations(
            dict(conf, logger=_quiet), timeout=REQUEST_TIMEOUT)
        conf.update({
            # Required by librdkafka, never joined. Its own per run: with Tansu
            # 0.6 a restarted node's shards never got their partitions while
            # their warm-ups reused the previous run's id (measured).
            "group.id": f"{settings.group_id}-warmup-{uuid.uuid4().hex[:12]}",
            "client.id": f"{conf.get('client.id', 'odinws')}-warmup",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "enable.partition.eof": True,
            "auto.offset.reset": "earliest",
            # As the live consumer reads: the past holds no record it would
            # not have delivered (aborted transactions).
            "isolation.level": consumer_config.get("isolation.level", "read_committed"),
            "fetch.wait.max.ms": 50,
            "logger": _quiet,
        })
        self.config = conf
        self.report = WarmupReport()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._finished: Deferred | None = None

    def status(self) -> dict[str, Any]:
        """The warm-up's state and its late runs', for the shard's status (read-only copy)."""
        status = self.report.as_status()
        status["late"] = self.late.status(self._late)
        return status

    @property
    def reading(self) -> bool:
        """Whether a run (the start's, or a later partition's) is reading."""
        return self.report.state is WarmupState.RUNNING or self._late_reading

    def startService(self) -> None:
        Service.startService(self)
        if self._settings.history.warmup_timeout <= 0 or not self._settings.kafka.topics:
            return
        self.report = WarmupReport(state=WarmupState.RUNNING)
        self._stopping = threading.Event()
        self._start(None, self._end)

    def warm(self, partitions: Iterable[tuple[str, int]]) -> None:
        """
        Read the recent past of C{partitions} back as at the start (each to
        C{on_partition}, then C{on_late} with all of them): now, or after the
        run that reads. Not running (stopping): C{on_late} at once.
        """
        partitions = set(partitions)
        if partitions - self._late:
            self.late.asked(first=not self._late)
        self._late.update(partitions)
        if not self.running:
            late, self._late = self._late, set()
            if self._on_late is not None:
                self._on_late(late, WarmupReport(state=WarmupState.STOPPED))
        else:
            self._next()

    def _start(self, only: set[tuple[str, int]] | None,
               end: Callable[..., None]) -> None:
        """One run (of C{only}, None: every partition) in a thread of its own."""
        self._finished = Deferred()
        run = WarmRead(self._settings, self._mapper, self._incarnations,
                       lambda: self._consumer_factory(self.config), self._hand_over,
                       functools.partial(end, finished=self._finished, only=only),
                       self._stopping, only)
        self._thread = threading.Thread(target=run.run, name="odinws-warmup", daemon=True)
        self._thread.start()

    def stopService(self) -> Deferred:
        """Stop reading; fires once the thread ended, or after L{STOP_TIMEOUT} anyway."""
        Service.stopService(self)
        self._stopping.set()
        finished, self._finished = self._finished, None
        if finished is None or finished.called:
            return succeed(None)
        done: Deferred = Deferred()
        timer = self._reactor.callLater(STOP_TIMEOUT, done.callback, None)

        def ended(_: object) -> None:
            if timer.active():
                timer.cancel()
                done.callback(None)
        finished.addBoth(ended)
        return done

    # Thread side.

    def _hand_over(self, warmed: WarmedPartition) -> None:
        self._reactor.callFromThread(self._deliver, warmed)

    def _deliver(self, warmed: WarmedPartition) -> None:
        if self.running:
            self._on_partition(warmed)

    def _end(self, report: WarmupReport, finished: Deferred, only: None = None) -> None:
        self._reactor.callFromThread(self._ended, report, finished)

    def _ended(self, report: WarmupReport, finished: Deferred) -> None:
        self.report = report    # not RUNNING: reading no more
        finished.callback(None)
        if self.running:
            self._on_done(report)
            self._next()

    def _late_end(self, report: WarmupReport, finished: Deferred,
                  only: set[tuple[str, int]]) -> None:
        self._reactor.callFromThread(self._late_ended, report, finished, only)

    def _late_ended(self, report: WarmupReport, finished: Deferred,
                    only: set[tuple[str, int]]) -> None:
        self._late_reading = False
        self.late.ended(only, report)
        finished.callback(None)
        if self._on_late is not None:
            self._on_late(only, report)
        if self.running:
            self._next()

    def _next(self) -> None:
        """Partitions asked for while a run was reading: their run now."""
        if self._late and not self.reading:
            late, self._late = self._late, set()
            self._late_reading = True
            self.late.started(late)
            self._start(late, self._late_end)


def partition_label(partition: tuple[str, int]) -> str:
    """A partition as /health names it (C{odin.trades[2]})."""
    return f"{partition[0]}[{partition[1]}]"


class LateRuns:
    """
    The warm-ups of partitions first seen after the start's (a rebalance, a
    partition added): which one reads and since when, which partitions wait
    for the next and since when, and how the last one ended. Their events
    wait at the warm gate meanwhile, so /health names them
    (C{warming_partitions}; C{warmup_overdue} when one takes far longer than
    a run may), C{odinws_history_late_warmup_partitions} counts them and
    C{odinws_history_late_warmup_seconds} says for how long.
    """

    def __init__(self, reactor: Any):
        self._clock = reactor.seconds
        self.reading: set[tuple[str, int]] = set()
        self._reading_since: float | None = None
        self._waiting_since: float | None = None
        self.runs = 0
        self._last: dict[str, Any] | None = None
        self._last_at = 0.0

    def asked(self, first: bool) -> None:
        """Partitions were asked for (C{first}: none waited before): they wait from now."""
        if first or self._waiting_since is None:
            self._waiting_since = self._clock()

    def started(self, partitions: set[tuple[str, int]]) -> None:
        """A run starts reading C{partitions} (all of those waiting)."""
        self.reading = set(partitions)
        self._reading_since = self._clock()
        self._waiting_since = None
        self._gauge()

    def ended(self, partitions: set[tuple[str, int]], report: WarmupReport) -> None:
        """The run of C{partitions} ended with C{report}."""
        self.runs += 1
        self.reading = set()
        self._reading_since = None
        self._last = dict(report.as_status(), partitions=sorted(map(partition_label, partitions)))
        self._last_at = self._clock()
        result = ("failed" if report.state is WarmupState.FAILED else
                  "incomplete" if report.incomplete else
                  "stopped" if report.state is WarmupState.STOPPED else "done")
        metrics.LATE_WARMUPS.labels(result).inc()
        self._gauge()

    def _gauge(self, waiting: int = 0) -> None:
        metrics.LATE_WARMUP_PARTITIONS.set(len(self.reading) + waiting)

    def status(self, waiting: set[tuple[str, int]]) -> dict[str, Any]:
        """What /health shows of the late runs (C{waiting}: asked for, not read yet)."""
        now = self._clock()
        self._gauge(len(waiting))
        last = None
        if self._last is not None:
            last = dict(self._last, ago=round(now - self._last_at, 1))
        reading_for = (None if self._reading_since is None or not self.reading
                       else round(now - self._reading_since, 1))
        waiting_for = (None if self._waiting_since is None or not waiting
                       else round(now - self._waiting_since, 1))
        metrics.LATE_WARMUP_SECONDS.set(max(reading_for or 0.0, waiting_for or 0.0))
        return {
            "reading": sorted(map(partition_label, self.reading)),
            "reading_for": reading_for,
            "waiting": sorted(map(partition_label, waiting)),
            "waiting_for": waiting_for,
            "runs": self.runs,
            "last": last,
        }
