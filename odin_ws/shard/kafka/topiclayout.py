"""
Partitions that appear while a shard runs (L{TopicLayout}): added to a
topic, or a topic created or recreated after the shard started.

With C{kafka.start_offset: latest}, librdkafka starts a partition the group
has no offset for at its end. For a partition that already existed when
the node started, that is the setting's meaning (the node does not replay
the past). For one that appears later it would lose every record produced
to it before this node's consumer got it, which takes a metadata refresh
(C{kafka.metadata_refresh_ms}) and a rebalance: seconds. Such a partition
is read from its beginning instead: all of it is newer than the node.

The partition counts are asked with an C{AdminClient} of its own (a
metadata request, which any broker answers): consumer methods called from
the consumer's rebalance callback abort the process (confluent-kafka 2.16,
C{CallState_get: Assertion `cs != NULL'}, measured). Nothing here asks the
group coordinator through the admin client: an admin request to the
coordinator (C{ListConsumerGroupOffsets}, C{DescribeConsumerGroups}) aborts
the process in librdkafka 2.16 when the coordinator's connection drops
during it (C{rd_kafka_enq_once_del_source_return: Assertion
`eonce->refcnt > 0'}, librdkafka issues 4605 and 3663; it killed a shard in
a leader-kill run). The group's committed offsets come from the consumer
itself (C{Consumer.committed}, the consumer group's own request path, out
of the rebalance callback); a new partition the group has no offset for is
placed by the consumer loop when librdkafka reports it has none
(C{auto.offset.reset} is C{error}), from L{TopicLayout.appeared}.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient

from odin_ws.common.events import Partition

#: Seconds a metadata or committed-offsets lookup may take.
LOOKUP_TIMEOUT = 5.0


class TopicLayout:
    """
    The partition count of each subscribed topic as this shard first saw it
    (at its first assignment; then as it grew). Used by the consumer thread
    only.

    @param config: librdkafka settings of the admin client
        (L{odin_ws.shard.kafka.incarnations.admin_config}).
    """

    def __init__(self, config: dict[str, Any], topics: Iterable[str],
                 admin_factory: Any = AdminClient):
        self._config = config
        self._topics = list(topics)
        self._admin_factory = admin_factory
        self._admin: Any = None
        self._counts: dict[str, int] | None = None
        # Topics the brokers said do not exist before the counts were taken.
        self._gone: set[str] = set()
        # Partitions found new by L{new}: all of their log is newer than the shard.
        self._appeared: set[Partition] = set()

    def _client(self) -> Any:
        if self._admin is None:
            self._admin = self._admin_factory(self._config)
        return self._admin

    def gone(self, topic: str) -> None:
        """The brokers say C{topic} does not exist: every partition it gets later is new."""
        if self._counts is not None:
            self._counts[topic] = 0
        else:
            self._gone.add(topic)

    def new(self, partitions: list[TopicPartition]) -> list[TopicPartition]:
        """
        Those of C{partitions} that appeared since the shard started: past
        their topic's partition count. The counts are taken at the first
        call (nothing is new then, but in topics reported L{gone}); they
        grow to include C{partitions}. (A recreated topic's partitions are
        the consumer loop's business: it knows the topic's identity.)

        @raise KafkaException: the first call could not take the counts.
        """
        if self._counts is None:
            self._counts = self._take_counts()
        counts = self._counts
        out = [tp for tp in partitions if tp.partition >= counts.get(tp.topic, 0)]
        self._appeared.update(Partition(tp.topic, tp.partition) for tp in out)
        for tp in partitions:
            counts[tp.topic] = max(counts.get(tp.topic, 0), tp.partition + 1)
        return out

    def _take_counts(self) -> dict[str, int]:
        metadata = self._client().list_topics(timeout=LOOKUP_TIMEOUT)
        counts = {}
        for name in self._topics:
            topic = metadata.topics.get(name)
            exists = topic is not None and topic.error is None and name not in self._gone
            counts[name] = len(topic.partitions) if exists else 0
        return counts

    def appeared(self, partition: Partition) -> bool:
        """Whether L{new} found C{partition} new since the start (its log is all new)."""
        return partition in self._appeared

    def unread(self, consumer: Consumer, topic: str, partition: int) -> bool:
        """
        Whether the group has never read C{partition} of C{topic} while it
        read others of it: no committed offset for it, one for some other
        partition. So it was added while the group was not reading (the
        node down or not yet started), and all of it is newer than what the
        group read: it starts at its beginning. (A partition merely idle
        since its assignment has its start position stored: the consumer
        loop's C{store_positions}.) The offsets are the C{consumer}'s
        own lookup: call it from the consumer thread, never from a
        rebalance callback.

        @raise KafkaException: the metadata or offsets could not be looked up.
        """
        metadata = self._client().list_topics(topic, timeout=LOOKUP_TIMEOUT).topics.get(topic)
        if metadata is None or metadata.error is not None:
            return False
        offsets = consumer.committed([TopicPartition(topic, p) for p in metadata.partitions],
                                     timeout=LOOKUP_TIMEOUT)
        committed = {c.partition for c in offsets if c.offset >= 0}
        return partition not in committed and bool(committed)
