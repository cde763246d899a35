"""
The state of a shard's Kafka consumer thread (L{LoopState}), and whom it
reports to (L{LoopOwner}). The thread's loop is built in parts, one per
concern, each a class over this state and the parts before it: the
offsets stored for the group's commits (L{odin_ws.shard.kafka.batchoffsets}),
where partitions without a usable offset start
(L{odin_ws.shard.kafka.placement}), the group membership and its rebalance
callbacks (L{odin_ws.shard.kafka.membership}), and the polling and batches
(L{odin_ws.shard.kafka.consumerloop}). The state is touched by that thread
only.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Protocol

from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, KafkaError
from twisted.python.failure import Failure

from odin_ws.common.events import Event, Partition
from odin_ws.common.settings import KafkaSettings
from odin_ws.shard.kafka.incarnations import TopicIncarnations
from odin_ws.shard.kafka.records import RecordMapper
from odin_ws.shard.kafka.topiclayout import TopicLayout


@dataclass(slots=True)
class PendingBatch:
    """A batch handed over (or empty), until its offsets are stored."""

    #: The next offset per partition the batch read up to.
    offsets: dict[Partition, int]
    #: The reactor has taken it (or it had no events to take).
    taken: bool


class LoopOwner(Protocol):
    """
    Whom the loop reports to, from its thread: the owner of the consumer's
    status (L{odin_ws.shard.kafka.ingest.KafkaIngest}'s "consumer thread" API).
    """

    def hand_over(self, batch_id: int, events: list[Event]) -> None: ...

    def broker_reached(self) -> None: ...

    def publish_assignment(self, assigned: frozenset[Partition]) -> None: ...

    def publish_missing(self, topics: frozenset[str]) -> None: ...

    def note_error(self, kind: str, text: str, level: str = "warn") -> None: ...

    def on_error(self, err: KafkaError) -> None: ...

    def fatal(self, kind: str, text: str) -> None: ...

    def log(self, level: str, fmt: str, **kw: Any) -> None: ...

    def audit(self, fmt: str, **kw: Any) -> None: ...

    def thread_failed(self, failure: Failure) -> None: ...

    def pausing(self, paused: bool) -> None: ...

    #: Why the loop is asked to rejoin its group (for its log line).
    rejoin_reason: str


class LoopState:
    """
    What the consumer thread knows, for every part of its loop.

    @param ingest: the owner of the status, reached through its method API.
    @param stopping: set when the loop should end.
    @param done: batch ids the reactor has taken.
    @param max_pending: batches out in the reactor before the loop waits.
    @param incarnations: the topics' epochs, looked up on every assignment
        and whenever a partition's offsets go back while assigned.
    @param layout: which partitions appeared since the start (None: they
        start where C{kafka.start_offset} says, like the others).
    @param cooperative: the group uses incremental (cooperative) rebalancing:
        the rebalance callbacks get only the partitions that move, and must
        answer with C{incremental_assign}/C{incremental_unassign} (eager:
        the whole assignment, C{assign}/C{unassign}).
    @param fatal: set when librdkafka declared the consumer fatally failed:
        the loop ends like at a stop, and its thread replaces the consumer
        (L{odin_ws.shard.kafka.consumerthread}).
    @param first_id: the first batch id (ids of an earlier loop's batches
        may still come back on C{done}).
    @param rejoin: set when the consumer should leave its group and join
        again (L{rejoin_group}); cleared by the loop.
    @param started_ms: when the shard's first consumer started, not this
        one: a replacement (after a stall or a fatal error) goes on from it,
        as from the shard's C{incarnations} (the topics found renewed among
        them). None: now.
    """

    def __init__(self, ingest: LoopOwner, consumer: Consumer, mapper: RecordMapper,
                 settings: KafkaSettings, stopping: threading.Event,
                 done: queue.SimpleQueue[int], max_pending: int,
                 incarnations: TopicIncarnations, cooperative: bool = False,
                 layout: TopicLayout | None = None, fatal: threading.Event | None = None,
                 first_id: int = 0, rejoin: threading.Event | None = None,
                 started_ms: int | None = None):
        self.ingest = ingest
        self.rejoin = rejoin or threading.Event()
        self.cooperative = cooperative
        self.consumer = consumer
        self.mapper = mapper
        self.fatal = fatal or threading.Event()
        self.topics = list(settings.topics)
        self.identity_every = settings.metadata_refresh_ms / 1000.0
        # Partitions appearing later start at their beginning (topiclayout);
        # with start_offset earliest they do anyway.
        self.layout = layout if settings.start_offset == "latest" else None
        #: Where a partition the group has no usable offset for starts
        #: (librdkafka's auto.offset.reset is "error": L{offset_lost} decides).
        self.start_offset = OFFSET_END if settings.start_offset == "latest" else OFFSET_BEGINNING
        #: When this consumer started (ms since the epoch). "latest" means the
        #: records from then on (L{since_started}), not the partition's end
        #: whenever librdkafka resolves a logical offset: that resolution came
        #: up to ~1 s after the assignment on Tansu (measured: the first ~40
        #: records at 50/s, produced after clients had subscribed, skipped).
        self.started_ms = started_ms if started_ms is not None else int(time.time() * 1000)
        # Partitions whose start waits for the topics' identities (brokers
        # not answering the lookup): placed at the next successful one.
        self.unplaced: set[Partition] = set()
        # Assigned partitions with an offset stored since their assignment.
        self.stored: set[Partition] = set()
        self.poll_batch = settings.poll_batch
        self.poll_timeout = settings.poll_timeout
        # Pause well before librdkafka's max.poll.interval.ms would expire.
        self.pause_after = settings.max_poll_interval_ms / 4000.0
        self.stopping = stopping
        self.done = done
        self.max_pending = max_pending
        self.next_id = first_id
        self.in_flight = 0
        # batch id -> its offsets and whether it is taken, in consumption order.
        self.pending: dict[int, PendingBatch] = {}
        self.assignment: set[Partition] = set()
        self.paused = False
        self.repause = False
        self.blocked_since: float | None = None
        self.incarnations = incarnations
        # Last offset consumed per assigned partition: one that goes back
        # while assigned means the broker's log was reset under us.
        self.positions: dict[Partition, int] = {}
        # When to retry a failed identity lookup (monotonic), or None.
        self.epochs_due: float | None = None
        # Configured topics the brokers said do not exist, until some of
        # their partitions are assigned here. (librdkafka sees a topic
        # created later at its next metadata refresh: every
        # topic.metadata.refresh.interval.ms, 5 minutes by default.)
        self.missing: set[str] = set()
