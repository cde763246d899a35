"""
The consumer group membership of a shard's consumer (L{GroupMembership}, a
part of the consumer thread's loop): the subscription, leaving and joining
again, and the rebalance callbacks that librdkafka serves from inside
C{consume()}: partitions assigned, revoked, or lost (the session timed
out: docs/operations.md, "A broker pause").
"""

from __future__ import annotations

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition

from odin_ws.common import metrics
from odin_ws.common.events import Partition
from odin_ws.shard.kafka.errors import describe_error
from odin_ws.shard.kafka.placement import Placement


class GroupMembership(Placement):
    """The subscription and the rebalance callbacks (their answers follow the group's protocol)."""

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
