"""
The offsets a shard's consumer stores for the group's commits
(L{BatchOffsets}, a part of the consumer thread's loop over its
L{odin_ws.shard.kafka.loopstate.LoopState}): a batch's offsets only once
the reactor has taken it, in consumption order, so a crash re-reads at
most what was not yet relayed; and the position of idle partitions, so
their next owner knows the group read them.
"""

from __future__ import annotations

import queue

from confluent_kafka import KafkaException, TopicPartition

from odin_ws.common.events import Partition
from odin_ws.shard.kafka.errors import describe_error
from odin_ws.shard.kafka.loopstate import LoopState


class BatchOffsets(LoopState):
    """Which batches the reactor has taken, and storing their offsets."""

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
