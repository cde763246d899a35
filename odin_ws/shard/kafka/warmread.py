"""
One warm-up's read of the past (L{WarmRead}), in the warm-up's thread, and
what it hands over: per partition a L{WarmedPartition}, at the end a
L{WarmupReport} (L{odin_ws.shard.kafka.warmup} runs it and says why).

Per partition it starts at the newest of the low watermark,
C{max_events_per_partition} before the high watermark, and the first record
younger than C{history.max_age}, and reads up to the end of the partition
it finds there (the fetch's high watermark: at or past the one taken at the
start; Tansu 0.6 answers ListOffsets with the first offset of the last
record batch plus one, so the start's watermark alone would stop short). A
partition with nothing to read goes over at once with its position only.
Bounded by C{history.warmup_timeout} and by C{history.max_bytes}: past the
budget the oldest buffered events go first, whatever the partition, as in
the history itself.
"""

from __future__ import annotations

import enum
import heapq
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaError, KafkaException, TopicPartition

from odin_ws.common.events import Event
from odin_ws.common.settings import Settings
from odin_ws.shard.history.partitionlog import EVENT_OVERHEAD
from odin_ws.shard.kafka.errors import describe_error
from odin_ws.shard.kafka.records import RecordMapper

#: Seconds one broker request may take at most (less when the deadline is nearer).
REQUEST_TIMEOUT = 2.0
#: Records taken per consume() call, and its wait.
CONSUME_BATCH = 1000
CONSUME_WAIT = 0.1
#: Tries at the topics' identities (epochs) before reading with what is known.
EPOCH_TRIES = 3


@dataclass
class WarmedPartition:
    """
    What the warm-up read of one partition: every record from C{start}
    through C{through}; C{events} are those that are events (offset order).
    Nothing to read (C{through} is C{start} - 1): only its position.
    """

    topic: str
    partition: int
    epoch: str
    start: int
    through: int
    events: list[Event] = field(default_factory=list)


class WarmupState(enum.StrEnum):
    """Where the warm-up is (a string in C{/health}: the values are the API)."""

    OFF = "off"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    STOPPED = "stopped"


@dataclass
class WarmupReport:
    """The outcome, for the shard's status and log line."""

    state: WarmupState = WarmupState.OFF
    events: int = 0               # events handed to the reactor
    partitions: int = 0           # partitions handed over
    incomplete: int = 0           # of those, read only in part (time ran out)
    seconds: float = 0.0
    error: str | None = None

    def as_status(self) -> dict[str, Any]:
        return {"state": self.state, "events": self.events, "partitions": self.partitions,
                "incomplete": self.incomplete, "seconds": round(self.seconds, 3),
                "error": self.error}


class WarmRead:
    """
    One warm-up's read (of every partition, or of C{only}), in its thread.

    @param make_consumer: creates the consumer (in the thread).
    @param hand_over: takes each L{WarmedPartition} (thread-safe).
    @param end: takes the L{WarmupReport} once, at the very end (thread-safe).
    """

    def __init__(self, s: Settings, mapper: RecordMapper, incarnations: Any,
                 make_consumer: Callable[[], Any],
                 hand_over: Callable[[WarmedPartition], None],
                 end: Callable[[WarmupReport], None], stopping: threading.Event,
                 only: set[tuple[str, int]] | None = None):
        self.incarnations = incarnations
        #: The partitions to read (None: every partition of every topic).
        self.only = only
        self.make_consumer = make_consumer
        self.hand_over = hand_over
        self.end = end
        self.stopping = stopping
        self.topics = sorted(s.kafka.topics if only is None
                             else {t for t, _ in only} & set(s.kafka.topics))
        self.max_events = s.history.max_events_per_partition
        self.max_age_ms = int(s.history.max_age * 1000)
        self.max_bytes = s.history.max_bytes
        self.timeout = s.history.warmup_timeout
        self.mapper = mapper
        self.report = WarmupReport(state=WarmupState.RUNNING)
        # Per partition being read: the high watermark at the start, where
        # reading started (moved up by budget evictions), the last offset
        # read, its events.
        self.ends: dict[tuple[str, int], int] = {}
        self.starts: dict[tuple[str, int], int] = {}
        self.read: dict[tuple[str, int], int] = {}
        self.buffers: dict[tuple[str, int], deque[Event]] = {}
        self.held = 0
        self.heads: list[tuple[int, tuple[str, int]]] = []
        self.epochs: dict[str, str] = {}

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def bound(self) -> float:
        return max(0.05, min(REQUEST_TIMEOUT, self.left()))

    def run(self) -> None:
        began = time.monotonic()
        self.deadline = began + self.timeout
        consumer = None
        try:
            consumer = self.make_consumer()
            self.warm(consumer)
            self.report.state = (WarmupState.STOPPED if self.stopping.is_set()
                                 else WarmupState.DONE)
        except (KafkaException, RuntimeError, ValueError, TypeError) as e:
            self.report.state = WarmupState.FAILED
            self.report.error = describe_error(e)
        except Exception as e:  # noqa: BLE001 - a bug must not end silently in a thread
            self.report.state = WarmupState.FAILED
            self.report.error = f"{type(e).__name__}: {e}"
        finally:
            self.report.seconds = time.monotonic() - began
            if consumer is not None:
                try:
                    consumer.close()   # no group, nothing to commit: nothing to wait for
                except (KafkaException, RuntimeError):
                    pass
            self.end(self.report)

    def warm(self, consumer: Any) -> None:
        for _ in range(EPOCH_TRIES):
            if self.incarnations.refresh(self.topics) is not None or self.done():
                break
        self.epochs = {t: self.incarnations.epoch(t) for t in self.topics}
        if self.done():
            return
        ranges = self.plan(consumer)
        if not ranges or self.done():
            return
        consumer.assign([TopicPartition(t, p, start) for (t, p), (start, _) in ranges.items()])
        for key, (start, end) in ranges.items():
            self.ends[key] = end
            self.starts[key] = start
            self.buffers[key] = deque()
        while self.ends and not self.done():
            for m in consumer.consume(CONSUME_BATCH, min(CONSUME_WAIT, self.bound())):
                self.take(consumer, m)
        if not self.stopping.is_set():
            for key in list(self.ends):    # out of time: what was read is still whole
                self.finish(consumer, key)

    def done(self) -> bool:
        return self.stopping.is_set() or self.left() <= 0

    def plan(self, consumer: Any) -> dict[tuple[str, int], tuple[int, int]]:
        """Per partition with something to read: (first offset, high watermark)."""
        metadata = consumer.list_topics(timeout=self.bound())
        partitions: list[TopicPartition] = []
        for topic in self.topics:
            t = metadata.topics.get(topic)
            if t is None or t.error is not None:
                continue
            partitions.extend(TopicPartition(topic, p) for p in sorted(t.partitions)
                              if self.only is None or (topic, p) in self.only)
        marks = {}
        for tp in partitions:
            if self.done():
                return {}
            low, high = consumer.get_watermark_offsets(tp, timeout=self.bound(), cached=False)
            marks[(tp.topic, tp.partition)] = (low, high)
        since: dict[tuple[str, int], int] = {}
        if self.max_age_ms > 0 and partitions:
            cutoff = int(time.time() * 1000) - self.max_age_ms
            found = consumer.offsets_for_times(
                [TopicPartition(tp.topic, tp.partition, cutoff) for tp in partitions],
                timeout=self.bound())
            for tp in found:
                low, high = marks[(tp.topic, tp.partition)]
                if tp.error is not None:
                        since[(tp.topic, tp.partition)] = low   # the history's age bound trims
                elif tp.offset < 0:   # no record that young: nothing to read
                    since[(tp.topic, tp.partition)] = high
                else:   # a record is there, whatever the watermark said
                    since[(tp.topic, tp.partition)] = tp.offset
                    marks[(tp.topic, tp.partition)] = (low, max(high, tp.offset + 1))
        ranges = {}
        for key, (low, high) in marks.items():
            start = max(low, high - self.max_events, since.get(key, low))
            if start < high:
                ranges[key] = (start, high)
            elif not self.stopping.is_set():
                # Nothing to read (empty, or nothing young enough): its
                # position is learnt all the same, so a re-read of what is
                # older (from an old commit) is not taken for live events.
                # Under read_committed, "high" is the last stable offset:
                # librdkafka (2.x, rd_kafka_ListOffsetsRequest) sends the
                # client's isolation.level with ListOffsets, so a record of
                # a transaction still open is past it, and live once committed.
                topic, partition = key
                self.hand_over(WarmedPartition(topic, partition, self.epochs.get(topic, ""),
                                               high, high - 1))
        return ranges

    def take(self, consumer: Any, m: Any) -> None:
        key = (m.topic(), m.partition())
        if key not in self.ends:
            return        # finished already (fetched before the pause)
        err = m.error()
        if err is not None:
            if err.code() == KafkaError._PARTITION_EOF:
                self.finish(consumer, key, through=m.offset() - 1)
            return
        offset = m.offset()
        self.read[key] = offset
        event = self.mapper.map(m.topic(), m.key(), m.value(), m.timestamp()[1],
                                m.partition(), offset, self.epochs.get(m.topic(), ""),
                                m.headers)
        if not isinstance(event, str):
            buffer = self.buffers[key]
            if not buffer:
                heapq.heappush(self.heads, (event.ts, key))
            buffer.append(event)
            self.held += len(event.envelope) + EVENT_OVERHEAD
            if self.held > self.max_bytes:
                self.evict()

    def evict(self) -> None:
        """Over the budget: drop the oldest buffered events, whatever the partition."""
        while self.held > self.max_bytes and self.heads:
            ts, key = heapq.heappop(self.heads)
            buffer = self.buffers.get(key)
            if not buffer:
                continue                       # handed over meanwhile
            if buffer[0].ts != ts:
                heapq.heappush(self.heads, (buffer[0].ts, key))
                continue
            gone = buffer.popleft()
            self.held -= len(gone.envelope) + EVENT_OVERHEAD
            self.starts[key] = gone.offset + 1
            if buffer:
                heapq.heappush(self.heads, (buffer[0].ts, key))

    def finish(self, consumer: Any, key: tuple[str, int], through: int | None = None) -> None:
        """
        Hand a partition over: read to its end (C{through}, the offset before
        the end), or in part when time ran out (through the last offset read).
        """
        del self.ends[key]
        buffer = self.buffers.pop(key)
        self.held -= sum(len(e.envelope) + EVENT_OVERHEAD for e in buffer)
        complete = through is not None
        if through is None:
            through = self.read.get(key, self.starts[key] - 1)
        if complete:
            try:
                consumer.pause([TopicPartition(*key)])
            except KafkaException:
                pass
        if through < self.starts[key] or self.stopping.is_set():
            return
        topic, partition = key
        events = list(buffer)
        self.report.events += len(events)
        self.report.partitions += 1
        self.report.incomplete += 0 if complete else 1
        self.hand_over(WarmedPartition(topic, partition, self.epochs.get(topic, ""),
                                              self.starts[key], through, events))
