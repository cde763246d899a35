"""
Partitions this shard holds but does not read (L{PartitionProgress}).

A partition can be assigned to the shard's consumer and still never be
fetched again: on Apache Kafka, after a broker was replaced on the same
address, a consumer whose session timed out (C{SESSTMOUT}) kept a partition
and read nothing more of it while its records piled up; every shard
reported partitions and a connected consumer, so /health said "ok" and the
parent's coverage check (partitions held by no shard) saw nothing. Only
the partition's progress tells: records there to read (its high watermark
ahead of the consumer's position) and the position not moving.

The consumer's statistics (once a second) give both for every assigned
partition. A partition behind and not moving for C{kafka.progress_grace}
is I{stalled}: /health names it (degraded C{partitions_stalled}), the
gauge C{odinws_kafka_partitions_stalled} counts it, and the shard leaves its
group and joins again (L{odin_ws.shard.kafka.consumerloop.ConsumerLoop.rejoin_group}),
which makes the group assign it anew and the consumer fetch it from its
committed position; a partition still stalled a grace after that gets a
new consumer (L{odin_ws.shard.kafka.ingest.KafkaIngest}: on Apache Kafka
with a replaced broker the rejoin alone did not cure it, measured).

A partition whose leader this consumer does not know (librdkafka's
statistics: C{leader} -1) is fetched from no broker, so its last high
watermark tells nothing: it counts as behind (seen on Apache Kafka after a
broker replaced with its data: a partition assigned with no leader, its
position equal to the stale high watermark of 0, never read again).

Not stalled: a partition the consumer loop paused on purpose (the reactor
is behind: back-pressure; L{PartitionProgress.clear}), or one whose
consumer cannot reach a broker (its own status says so).
"""

from __future__ import annotations

from collections.abc import Iterable

from odin_ws.common.events import Partition


def position_of(info: dict) -> int:
    """
    The consumer's position in a partition, from librdkafka's statistics of
    it: the next offset to fetch, or past the last record handed to the
    application, whichever is further; -1 when neither is known yet.
    """
    return max(info.get("next_offset", -1), info.get("app_offset", -1), -1)


class PartitionProgress:
    """
    Per partition, since when it has been behind at the same position.
    Fed by the consumer's statistics (L{observe}); read by L{stalled}.
    """

    def __init__(self) -> None:
        # Partition -> (position, time since which it has been behind there).
        self._behind: dict[Partition, tuple[int, float]] = {}

    def observe(self, partition: Partition, position: int, high: int, now: float) -> None:
        """
        One look at a held partition: its position and high watermark (-1
        when unknown: a partition the consumer has not fetched even once
        since it got it is behind too).
        """
        if 0 <= high <= position:
            self._behind.pop(partition, None)  # read to its end
            return
        seen = self._behind.get(partition)
        if seen is None or seen[0] != position:
            self._behind[partition] = (position, now)

    def keep_only(self, held: Iterable[Partition]) -> None:
        """Forget partitions no longer held."""
        held = set(held)
        for partition in [p for p in self._behind if p not in held]:
            del self._behind[partition]

    def clear(self) -> None:
        """Forget everything: the consumer paused its partitions, or cannot read."""
        self._behind.clear()

    def stalled(self, now: float, grace: float) -> dict[Partition, float]:
        """The partitions behind without moving for at least C{grace} seconds, with how long."""
        if grace <= 0:
            return {}
        return {p: now - since for p, (_, since) in self._behind.items()
                if now - since >= grace}
