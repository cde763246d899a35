"""
Where the partitions of a shard's consumer start when the group has no
usable offset for them (librdkafka's C{auto.offset.reset} is "error", so
the choice is odinws's, made once the topic's identity is known), and what
happens when a topic turns out to be a new incarnation (recreated, the
broker replaced) or a partition's offsets go back (L{Placement}, a part of
the consumer thread's loop over its
L{odin_ws.shard.kafka.loopstate.LoopState}).
"""

from __future__ import annotations

import time

from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, KafkaException, TopicPartition

from odin_ws.common import metrics
from odin_ws.common.events import Partition
from odin_ws.shard.kafka.batchoffsets import BatchOffsets
from odin_ws.shard.kafka.errors import describe_error
from odin_ws.shard.kafka.topiclayout import LOOKUP_TIMEOUT, TopicLayout

# Seconds between retries of a topic identity lookup that failed.
EPOCH_RETRY = 1.0


class Placement(BatchOffsets):
    """Where partitions start, and reading new incarnations of topics from their beginning."""

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
        an earlier lookup found: C{TopicIncarnations.renewed}); a
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
            start = (OFFSET_BEGINNING if tp.topic in self.incarnations.renewed
                     else self.start_offset)
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
