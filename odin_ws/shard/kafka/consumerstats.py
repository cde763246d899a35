"""
What a shard's consumer learns from librdkafka's statistics (once a
second, L{ConsumerStatistics}, a part of
L{odin_ws.shard.kafka.ingest.KafkaIngest}): whether a broker answers (one
that accepts connections and answers nothing is "unresponsive"), the lag
per partition, each topic's partition count, and the progress of the held
partitions: those stalled make the consumer rejoin its group, then get it
replaced (L{odin_ws.shard.kafka.progress}).
"""

from __future__ import annotations

import enum
import json
import threading
from typing import Any, Protocol

from odin_ws.common import metrics
from odin_ws.common.events import Partition
from odin_ws.common.settings import Settings
from odin_ws.shard.kafka.progress import PartitionProgress, position_of


class IngestState(enum.StrEnum):
    """The consumer's state in C{/health} (a string there: the values are the API)."""

    STOPPED = "stopped"
    STARTING = "starting"
    RUNNING = "running"
    RETRYING = "retrying"
    UNRESPONSIVE = "unresponsive"
    ERROR = "error"


class StatisticsOwner(Protocol):
    """The status a L{ConsumerStatistics} reads and writes (its L{KafkaIngest})."""

    _reactor: Any
    _settings: Settings
    _state: IngestState
    _assigned: frozenset[Partition]
    _paused: bool
    _partitions: dict[str, int]
    _progress: PartitionProgress
    _stalled: dict[Partition, float]
    _stall_rejoined_at: float | None
    _stall_rejoins: int
    _stats_at: float
    _last_error: str | None
    _lag: int
    _rejoin: threading.Event
    _fatal: threading.Event
    rejoin_reason: str
    unanswered_after: float

    def _set_state(self, state: IngestState, connected: bool) -> None: ...

    def _log(self, level: str, fmt: str, **kw: Any) -> None: ...

    def note_error(self, kind: str, text: str, level: str = "warn") -> None: ...

    def _check_progress(self, now: float) -> None: ...


class ConsumerStatistics:
    """librdkafka's C{stats_cb} (consumer thread) and what follows from it."""

    # The owner's attributes (L{StatisticsOwner}) that its methods set to a
    # value narrower than their type (mypy would take that for the type).
    _last_error: str | None
    _assigned: frozenset[Partition]
    _stall_rejoined_at: float | None

    def _on_stats(self: StatisticsOwner, text: str) -> None:
        stats = json.loads(text)
        self._stats_at = self._reactor.seconds()
        up = False
        hung = None
        bound_us = self.unanswered_after * 1e6
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
                lag = partition_lag(info)
                metrics.KAFKA_LAG.labels(topic, p).set(lag)
                total += lag
                if watching:
                    # A partition with no leader in this consumer's metadata
                    # is fetched from no broker: its high watermark is the
                    # last one seen, maybe its position, and it looks read to
                    # its end (Apache Kafka, broker replaced: held this way
                    # for minutes, its records lost with /health "ok").
                    high = info.get("hi_offset", -1) if info.get("leader", 0) >= 0 else -1
                    self._progress.observe(Partition(topic, int(p)), position_of(info),
                                           high, self._stats_at)
        if counts != self._partitions:
            self._partitions = counts  # replaced whole: the reactor reads it
        self._lag = total
        if watching:
            self._progress.keep_only(assigned)
        else:
            self._progress.clear()
        self._check_progress(self._stats_at)

    def _check_progress(self: StatisticsOwner, now: float) -> None:
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


def partition_lag(info: dict) -> int:
    """Records not yet taken by on_batch: high watermark - stored position."""
    hi = info.get("hi_offset", -1)
    for key in ("stored_offset", "committed_offset", "app_offset"):
        position = info.get(key, -1)
        if position >= 0 and hi >= 0:
            return max(0, hi - position)
    return 0
