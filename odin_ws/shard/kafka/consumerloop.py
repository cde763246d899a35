"""
What the Kafka consumer thread of a shard does (L{ConsumerLoop}): poll,
map records to events, hand batches to the reactor, store the offsets of
the batches the reactor has taken, pause when too many are out. Its state
is touched by that thread only; it reports to the L{KafkaIngest} that owns
the consumer's status through that class's small "consumer thread" API.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Protocol

from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, KafkaError, KafkaException, TopicPartition
from twisted.python.failure import Failure

from odin_ws.common import metrics
from odin_ws.common.events import Event, Partition
from odin_ws.common.prometheus_internals import Observer
from odin_ws.common.settings import KafkaSettings
from odin_ws.shard.history.holes import Hole
from odin_ws.shard.kafka.incarnations import TopicIncarnations
from odin_ws.shard.kafka.records import RecordMapper
from odin_ws.shard.kafka.topiclayout import LOOKUP_TIMEOUT, TopicLayout


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


#: The broker's share of the delivery latency, observed once per batch.
_BROKER_LATENCY = Observer(metrics.BROKER_LATENCY)

# Seconds the thread waits at stop for batches already in the reactor, so
# their offsets are committed by close().
STOP_GRACE = 2.0
# Seconds between retries of a topic identity lookup that failed.
EPOCH_RETRY = 1.0


def describe_error(e: BaseException) -> str:
    """The text of a confluent-kafka exception (its KafkaError's, when it has one)."""
    if e.args and isinstance(e.args[0], KafkaError):
        return e.args[0].str()
    return str(e)


class ConsumerLoop:
    """
    The consumer thread's loop (L{run}).

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
    """

    def __init__(self, ingest: LoopOwner, consumer: Consumer, mapper: RecordMapper,
                 settings: KafkaSettings, stopping: threading.Event,
                 done: queue.SimpleQueue[int], max_pending: int,
                 incarnations: TopicIncarnations, cooperative: bool = False,
                 layout: TopicLayout | None = None, fatal: threading.Event | None = None,
                 first_id: int = 0, rejoin: threading.Event | None = None):
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
        self.started_ms = int(time.time() * 1000)
        # Partitions whose start waits for the topics' identities (brokers
        # not answering the lookup): placed at the next successful one.
        self.unplaced: set[Partition] = set()
        # Topics seen change identity while the shard runs (recreated, the
        # broker replaced): a partition of one without a usable offset was
        # never read by the group in this incarnation, whenever it is
        # assigned, so all of its log is new (placed from its beginning).
        self.renewed: set[str] = set()
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

    def run(self) -> None:
        ingest = self.ingest
        try:
            self.subscribe()
            while not (self.stopping.is_set() or self.fatal.is_set()):
                self.poll_once()
            deadline = time.monotonic() + STOP_GRACE
            while self.in_flight and time.monotonic() < deadline:
                self.take_done(0.05)
        except Exception:
            # A bug here would otherwise end ingestion silently in a thread.
            ingest.thread_failed(Failure())
        finally:
            try:
                self.consumer.close()  # commits stored offsets, leaves the group
            except (KafkaException, RuntimeError) as e:
                ingest.log("warn", "Kafka consumer close: {error}", error=describe_error(e))

    def poll_once(self) -> None:
        self.take_done(0)
        if self.rejoin.is_set():
            self.rejoin.clear()
            self.rejoin_group()
        if self.epochs_due is not None and time.monotonic() >= self.epochs_due:
            changed = self.refresh_epochs()
            if changed is not None:
                self.reread_recreated({topic for topic, old in changed.items() if old})
                self.place_unplaced()
                self.store_positions()
        if self.in_flight < self.max_pending:
            self.blocked_since = None
            if self.paused:
                self.consumer.resume(self.consumer.assignment())
                self.paused = False
                self.ingest.pausing(False)
            self.handle(self.take())
            return
        now = time.monotonic()
        if self.blocked_since is None:
            self.blocked_since = now
        if not self.paused and now - self.blocked_since > self.pause_after:
            self.paused = self.repause = True
            self.ingest.pausing(True)
        if self.paused:
            if self.repause:  # after a rebalance, new partitions start unpaused
                self.consumer.pause(self.consumer.assignment())
                self.repause = False
            # Paused partitions return nothing; polling keeps the membership.
            self.handle(self.consumer.consume(self.poll_batch, 0))
        self.take_done(self.poll_timeout)

    def take(self) -> list:
        """
        The next records: wait for the first one only, then take whatever
        else is already fetched, up to poll_batch. (consume(n, t) would wait
        for n records or all of t: every event of a quiet stream would wait
        poll_timeout. Measured with Tansu, one record per 20 ms, produce to
        on_batch: median 166 ms before, with consume(500, 0.05) and
        librdkafka's fetch.wait.max.ms 500; see kafka.fetch_wait_max_ms.)
        """
        messages = self.consumer.consume(1, self.poll_timeout)
        if messages and self.poll_batch > 1:
            messages.extend(self.consumer.consume(self.poll_batch - 1, 0))
        return messages

    def handle(self, messages: list) -> None:
        events: list[Event] = []
        offsets: dict[Partition, int] = {}
        records: Counter[str] = Counter()
        rejected: Counter[str] = Counter()
        lost: dict[Partition, str] = {}
        mapper = self.mapper
        positions = self.positions
        epoch_of = self.incarnations.epoch
        consumed = time.time()
        for m in messages:
            err = m.error()
            if err is not None:
                # librdkafka's fatal state (e.g. fenced by a consumer with this
                # shard's instance id) reaches consume() as _FATAL, fatal() false.
                if err.fatal() or err.code() == KafkaError._FATAL:
                    self.ingest.fatal(err.name().lstrip("_").lower(), err.str())
                    break
                if err.code() == KafkaError._AUTO_OFFSET_RESET:
                    lost[Partition(m.topic(), m.partition())] = err.str()
                    continue
                if err.code() == KafkaError.UNKNOWN_TOPIC_OR_PART and m.topic() in self.topics:
                    # "Subscribed topic not available": said once per topic.
                    self.set_missing(self.missing | {m.topic()})
                    if self.layout is not None:
                        self.layout.gone(m.topic())
                if err.code() != KafkaError._PARTITION_EOF:
                    # A connection error of an outage can come this way too,
                    # after the consumer runs again: the same rules as error_cb.
                    self.ingest.on_error(err)
                continue
            topic, partition, offset = m.topic(), m.partition(), m.offset()
            key = Partition(topic, partition)
            last = positions.get(key)
            if last is not None and offset <= last:
                self.rewound(topic, partition, last, offset)
            positions[key] = offset
            offsets[key] = offset + 1
            records[topic] += 1
            result = mapper.map(topic, m.key(), m.value(), m.timestamp()[1], partition, offset,
                                epoch_of(topic), m.headers)
            if isinstance(result, str):
                rejected[result] += 1
            else:
                if result.__class__ is Hole:   # given up on, its subscribers told
                    rejected[result.reason] += 1
                result.consumed = consumed
                events.append(result)
        # The broker's share of the delivery latency (and the producer's:
        # record timestamp to consumed), once per event and node.
        _BROKER_LATENCY.observe_all([max(0.0, consumed - e.ts / 1000.0) for e in events])
        for topic, n in records.items():
            metrics.KAFKA_RECORDS.labels(topic).inc(n)
        for reason, n in rejected.items():
            metrics.KAFKA_REJECTED.labels(reason).inc(n)
        if lost:
            self.offsets_lost(lost)
        if not offsets:
            return
        self.ingest.broker_reached()
        batch_id = self.next_id
        self.next_id += 1
        self.pending[batch_id] = PendingBatch(offsets, not events)
        if events:
            self.in_flight += 1
            self.ingest.hand_over(batch_id, events)
        else:
            self.store_taken()

    def take_done(self, timeout: float) -> None:
        """Collect batches the reactor has taken (waiting up to C{timeout})."""
        try:
            batch_id = self.done.get(timeout=timeout) if timeout else self.done.get_nowait()
            while True:
                entry = self.pending.get(batch_id)
                if entry is not None and not entry.taken:
                    entry.taken = True
                    self.in_flight -= 1
                batch_id = self.done.get_nowait()
        except queue.Empty:
            pass
        self.store_taken()

    def store_taken(self) -> None:
        """Store the offsets of the taken batches that no untaken batch precedes."""
        merged: dict[Partition, int] = {}
        for batch_id in list(self.pending):
            batch = self.pending[batch_id]
            if not batch.taken:
                break
            merged.update(batch.offsets)
            del self.pending[batch_id]
        self.store({tp: o for tp, o in merged.items() if tp in self.assignment})

    def store(self, offsets: dict[Partition, int]) -> None:
        """Store offsets for librdkafka's next commit."""
        if not offsets:
            return
        try:
            self.consumer.store_offsets(offsets=[TopicPartition(tp.topic, tp.partition, o)
                                                 for tp, o in offsets.items()])
        except KafkaException as e:  # e.g. revoked in the same poll
            self.ingest.note_error("store_offsets", describe_error(e))
            return
        self.stored.update(offsets)

    def store_positions(self) -> None:
        """
        Store the position of assigned partitions that had nothing stored
        since their assignment and nothing in flight (idle ones): the group
        then remembers where this node started reading them, so their next
        owner does not take them for partitions the group never read
        (L{offsets_lost}).
        """
        busy = {tp for batch in self.pending.values() for tp in batch.offsets}
        idle = [TopicPartition(tp.topic, tp.partition) for tp in self.assignment
                if tp not in self.stored and tp not in busy]
        if not idle:
            return
        try:
            positions = self.consumer.position(idle)
        except KafkaException as e:
            self.ingest.note_error("position", describe_error(e))
            return
        self.store({Partition(tp.topic, tp.partition): tp.offset for tp in positions
                    if tp.offset >= 0})

    def rewound(self, topic: str, partition: int, last: int, offset: int) -> None:
        """
        A partition's offsets went back while assigned: its log is not the
        one read so far. Look the topic's identity up again now, before the
        new records are handed over; if it is unchanged (a log truncated or
        reset in place), give the topic a new epoch all the same, so the
        de-duplication marks make way for the new records.
        """
        metrics.KAFKA_REWINDS.inc()
        changed = self.refresh_epochs()  # audits a changed identity itself
        if changed and topic in changed:
            return
        old = self.incarnations.epoch(topic)
        self.incarnations.rewind(topic)
        self.ingest.audit("Kafka {topic}[{partition}] went back from offset {last} to {offset} "
                          "with the same topic identity (log reset in place, or identity "
                          "unknown); new epoch {new} (was {old})", topic=topic,
                          partition=partition, last=last, offset=offset,
                          new=self.incarnations.epoch(topic), old=old or "unknown")

    def refresh_epochs(self) -> dict[str, str] | None:
        """Look up the assigned topics' epochs; on failure retry later."""
        topics = {t for t, _ in self.assignment}
        changed = self.incarnations.refresh(topics)
        if changed is None:
            failure = self.incarnations.failure
            self.ingest.note_error("topic_identity", "topic identity lookup failed: "
                                   + (describe_error(failure) if failure else "no answer"))
            self.epochs_due = time.monotonic() + EPOCH_RETRY
            return None
        # Looked at again every metadata refresh: a topic deleted and
        # recreated within one keeps its partitions assigned, and librdkafka
        # (2.16) goes on fetching at the old offset in the new log.
        self.epochs_due = time.monotonic() + self.identity_every
        for topic, old in changed.items():
            if old:
                self.renewed.add(topic)
                self.ingest.audit("Kafka topic {topic} is a new incarnation (epoch {old} -> "
                                  "{new}): recreated, broker replaced or another cluster",
                                  topic=topic, old=old, new=self.incarnations.epoch(topic))
        return changed

    def reread_recreated(self, topics: set[str], among: set[Partition] | None = None) -> None:
        """
        Topics found recreated while their partitions stayed assigned: read
        those partitions (those C{among}, if given) from the beginning of the
        new log (all of it is new; the consumer would otherwise skip its
        first records, up to the old offset).
        """
        if among is not None:  # in the rebalance callback: kept partitions, still fetching
            again = [tp for tp in among if tp.topic in topics]
            for tp in list(again):
                try:
                    self.consumer.seek(TopicPartition(tp.topic, tp.partition, OFFSET_BEGINNING))
                except KafkaException as e:
                    self.ingest.note_error("seek", describe_error(e))
                    again.remove(tp)
                self.positions.pop(tp, None)
        else:
            starts = {tp: OFFSET_BEGINNING for tp in self.assignment if tp.topic in topics}
            if not starts or not self.restart_at(starts):
                return
            again = list(starts)
        for tp in again:
            self.ingest.log("info", "Kafka {topic}[{partition}]: the topic was recreated, "
                            "read from the beginning of its new log",
                            topic=tp.topic, partition=tp.partition)

    def offsets_lost(self, lost: dict[Partition, str]) -> None:
        """
        librdkafka has no usable offset for these assigned partitions (its
        auto.offset.reset is "error", so it fetches nothing more of them;
        the values say why): the group has none, or the offset is outside
        the log (a topic recreated or a broker replaced within one metadata
        refresh, retention). Where each starts is chosen here, once its
        topic's identity is known, so no record of a new log is delivered
        under the old one's epoch: a new incarnation from its beginning (also one
        an earlier lookup found: C{renewed}); a
        partition the group never read while it read others of its topic
        (added while the node was down) from its beginning; else where
        C{kafka.start_offset} says.
        """
        lost = {tp: why for tp, why in lost.items() if tp in self.assignment}
        if not lost:
            return
        changed = self.refresh_epochs()
        if changed is None:
            self.unplaced.update(lost)  # placed at the next successful lookup
            return
        recreated = {tp.topic for tp in lost if changed.get(tp.topic)}
        self.reread_recreated(recreated)
        self.place({tp for tp in lost if tp.topic not in recreated},
                   "; ".join(sorted(set(lost.values()))))

    def place(self, partitions: set[Partition], why: str) -> None:
        """Start C{partitions} (of unchanged identity) where L{offsets_lost} says."""
        if not partitions:
            return
        starts = {}
        for tp in partitions:
            # A new incarnation found by an earlier lookup (the periodic one
            # while a replaced broker's group re-formed, measured): the
            # records produced before this assignment are new, not "latest".
            start = OFFSET_BEGINNING if tp.topic in self.renewed else self.start_offset
            if start == OFFSET_END and self.layout is not None and self.unread(self.layout, tp):
                start = OFFSET_BEGINNING
            starts[tp] = start
        starts.update(self.since_started([tp for tp, o in starts.items() if o == OFFSET_END]))
        if not self.restart_at(starts):
            return
        for tp, start in starts.items():
            self.ingest.log("info", "Kafka {topic}[{partition}]: no usable offset ({why}); "
                            "reading from its {where}", topic=tp.topic, partition=tp.partition,
                            why=why, where="end" if start == OFFSET_END else
                            "beginning" if start == OFFSET_BEGINNING else
                            f"first record since the consumer started (offset {start})")

    def since_started(self, partitions: list[Partition]) -> dict[Partition, int]:
        """
        Where C{start_offset} latest starts C{partitions}, as real offsets:
        each one's first record timestamped at or after L{started_ms}, else
        (none yet) its end now. A failed lookup leaves them at the logical
        end (counted, C{start_offset} in C{last_error}).
        """
        if not partitions:
            return {}
        out = {}
        try:
            found = self.consumer.offsets_for_times(
                [TopicPartition(tp.topic, tp.partition, self.started_ms) for tp in partitions],
                timeout=LOOKUP_TIMEOUT)
            for tp in found:
                if tp.error is not None:
                    continue
                offset = tp.offset if tp.offset >= 0 else self.consumer.get_watermark_offsets(
                    TopicPartition(tp.topic, tp.partition), timeout=LOOKUP_TIMEOUT,
                    cached=False)[1]   # no record that young: its end now
                if offset >= 0:
                    out[Partition(tp.topic, tp.partition)] = offset
        except KafkaException as e:
            self.ingest.note_error("start_offset", describe_error(e))
        return out

    def unread(self, layout: TopicLayout, tp: Partition) -> bool:
        """
        Whether C{tp}, of a topic of unchanged identity, is all newer than
        what the group read: it appeared while the shard ran, or the group
        read other partitions of its topic but never it (added while the
        node was down). A failed lookup counts as read (C{start_offset}).
        """
        if layout.appeared(tp):
            return True
        try:
            return layout.unread(self.consumer, tp.topic, tp.partition)
        except (KafkaException, TimeoutError) as e:
            self.ingest.note_error("new_partitions", describe_error(e))
            return False

    def place_unplaced(self) -> None:
        """Place the partitions whose identity lookup failed, now that one succeeded."""
        waiting, self.unplaced = self.unplaced & self.assignment, set()
        if waiting:
            self.place(waiting, "placed after the topic identity lookup")

    def restart_at(self, starts: dict[Partition, int]) -> bool:
        """
        Read C{starts}'s partitions again from the given offsets. By
        reassigning them: a seek is refused (C{_STATE}) for a partition
        whose fetcher stopped at an offset error (librdkafka 2.16, measured).
        What batches in flight read of them is not stored: it was the old log.
        """
        tps = [TopicPartition(tp.topic, tp.partition, o) for tp, o in starts.items()]
        try:
            if self.cooperative:
                self.consumer.incremental_unassign([TopicPartition(tp.topic, tp.partition)
                                                    for tp in starts])
                self.consumer.incremental_assign(tps)
            else:
                kept = [TopicPartition(tp.topic, tp.partition) for tp in self.assignment
                        if tp not in starts]
                self.consumer.assign((self.consumer.position(kept) if kept else []) + tps)
        except KafkaException as e:
            self.ingest.note_error("seek", describe_error(e))
            return False
        for batch in self.pending.values():
            for tp in starts.keys() & batch.offsets.keys():
                del batch.offsets[tp]
        for tp in starts:
            self.positions.pop(tp, None)
            self.stored.discard(tp)
        self.unplaced -= starts.keys()
        self.repause = self.paused
        return True

    def subscribe(self) -> None:
        self.consumer.subscribe(self.topics, on_assign=self.on_assign,
                                on_revoke=self.on_revoke, on_lost=self.on_lost)

    def rejoin_group(self) -> None:
        """
        Leave the group and join it again, so that it assigns every
        partition anew: the node's parent found partitions that no shard
        holds for longer than a rebalance takes (L{odin_ws.parent.coverage}:
        static members restarted within their session get their old
        assignment back, without the partitions added meanwhile; a group
        that did not re-form after a broker was replaced). Unsubscribing
        leaves the group (a static member leaves only then) and revokes
        this shard's partitions (on_revoke stores what was taken); the
        subscription that follows joins again.
        """
        metrics.KAFKA_REJOINS.inc()
        self.ingest.log("warn", "Kafka: {reason}; leaving the consumer group and joining again "
                        "so that it assigns them anew", reason=self.ingest.rejoin_reason)
        try:
            self.consumer.unsubscribe()
            self.subscribe()
        except KafkaException as e:
            self.ingest.note_error("rejoin", describe_error(e))

    def set_missing(self, topics: set[str]) -> None:
        if topics != self.missing:
            self.missing = topics
            self.ingest.publish_missing(frozenset(topics))

    def on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        kept = set(self.assignment)  # cooperative: what stays assigned through this rebalance
        self.assignment.update(Partition(tp.topic, tp.partition) for tp in partitions)
        # The topics' identities first: a recreated topic's partitions are new.
        changed = self.refresh_epochs() or {}
        recreated = {topic for topic, old in changed.items() if old}
        for tp in partitions:
            if tp.topic in recreated:
                # Its new log from the start: an offset the group committed
                # may be the old log's (Apache Kafka 4.4 kept them, measured).
                tp.offset = OFFSET_BEGINNING
        if self.layout is not None:
            self.note_new_partitions(self.layout,
                                     [tp for tp in partitions if tp.topic not in recreated])
        # Eager: the whole new assignment (the old one was revoked first).
        # Cooperative: only the partitions added; the ones kept go on
        # flowing with their positions, and get no callback at all.
        if self.cooperative:
            consumer.incremental_assign(partitions)
        else:
            consumer.assign(partitions)
        # The kept partitions of a topic this lookup found recreated go on at
        # their old offsets otherwise (the lookup's answer is used up here:
        # the periodic one finds nothing new). Seen with Tansu replaced under
        # a node whose group rebalanced cooperatively.
        self.reread_recreated(recreated, kept)
        for tp in partitions:
            # A new assignment starts from the committed offset: going back
            # to it is a re-read, not a new log.
            self.positions.pop(Partition(tp.topic, tp.partition), None)
            # Exported from the assignment on (the statistics set the value
            # within a second), so lag alerts and graphs see every partition.
            metrics.KAFKA_LAG.labels(tp.topic, str(tp.partition)).set(0)
        self._publish_assignment()
        if self.missing:
            self.set_missing(self.missing - {tp.topic for tp in partitions})
        self.repause = self.paused
        self.ingest.broker_reached()

    def note_new_partitions(self, layout: TopicLayout,
                            partitions: list[TopicPartition]) -> None:
        """
        Partitions that appeared while the shard runs start at their
        beginning when the group has no offset for them: librdkafka then
        reports none (auto.offset.reset is "error"), and L{place} starts
        them so (asking the group's offsets here, in the rebalance callback,
        could abort the process: L{odin_ws.shard.kafka.topiclayout}).
        """
        try:
            new = layout.new(partitions)
        except (KafkaException, TimeoutError) as e:
            self.ingest.note_error("new_partitions", describe_error(e))
            return
        if new:
            self.ingest.log("info", "Kafka partitions new since the start: {partitions}; "
                            "read from their beginning unless the group read them already",
                            partitions=", ".join(f"{tp.topic}[{tp.partition}]" for tp in new))

    def on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """
        The group took the partitions away without a rebalance handing them
        over: librdkafka's session timed out (no heartbeat answered for
        C{session.timeout.ms}: a broker pause or outage) or the member was
        evicted. Counted and said, for it costs a rejoin (and, for a dynamic
        member, a wait for the broker to drop the old member: docs/operations.md,
        "A broker pause"); then the same as a revoke.
        """
        if partitions:
            metrics.KAFKA_ASSIGNMENTS_LOST.inc()
            self.ingest.log("warn", "Kafka consumer lost its {n} partitions (group session "
                            "timed out or evicted): rejoining the group", n=len(partitions))
        self.on_revoke(consumer, partitions)

    def on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Also on_lost (the member was evicted: its commit fails, the new
        # owner re-reads). Store what has been taken so the commit librdkafka
        # makes on revoke includes it, then forget the rest for these
        # partitions: their new owner re-reads from the committed offset.
        self.take_done(0)
        gone = {Partition(tp.topic, tp.partition) for tp in partitions}
        for batch in self.pending.values():
            for tp in gone & batch.offsets.keys():
                del batch.offsets[tp]
        self.assignment -= gone
        self.stored -= gone
        self.unplaced -= gone
        for tp in gone:
            self.positions.pop(tp, None)
        self._publish_assignment()
        for topic, partition in gone:
            try:
                metrics.KAFKA_LAG.remove(topic, str(partition))
            except KeyError:
                pass
        # Last: librdkafka commits the stored offsets of these partitions as
        # they are unassigned.
        if self.cooperative:
            consumer.incremental_unassign(partitions)
        else:
            consumer.unassign()

    def _publish_assignment(self) -> None:
        self.ingest.publish_assignment(frozenset(self.assignment))
