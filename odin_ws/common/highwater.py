"""
The de-duplication marks: the highest offset seen per Kafka partition, and
the incarnation (epoch) of the topic it belongs to. The hub keeps one set
(relay to the other shards), each shard another (its own deliveries).

A partition that moves to another shard (rebalance, shard restart) is
re-read from its last commit: those offsets are at or below the mark and
are dropped as duplicates. But offsets also go back when the log itself is
new: the broker was replaced (Tansu in memory), the topic was recreated, or
the node fails over to another cluster. Then the events carry another epoch
(the consumer tags them with the topic's current identity, see
L{odin_ws.shard.kafka.consumerloop}); the mark is reset to the new incarnation,
counted (C{odinws_offset_resets_total{reason="topic_changed"}}) and audited,
instead of silently discarding every event until the new offsets pass the
old ones. Events still in flight from the old incarnation are dropped.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from types import MappingProxyType

from odin_ws.common import metrics
from odin_ws.common.events import Event
from odin_ws.common.logs import audit

#: Epochs that say "unknown" (an event from a consumer that could not learn
#: the topic's identity): such an event is compared by offset only.
UNKNOWN = ("", "0")

#: Old epochs remembered per partition, to drop their late events.
RETIRED_KEPT = 4


class HighWater:
    """
    De-duplication marks of one process.

    @param where: who holds them ("hub", "shard 0"), for the audit line.
    """

    def __init__(self, where: str):
        self.where = where
        self._marks: dict[tuple[str, int], tuple[str, int]] = {}
        self._retired: dict[tuple[str, int], tuple[str, ...]] = {}
        # (topic, epoch) already audited: one line per topic change, not per partition.
        self._audited: set[tuple[str, str]] = set()

    @property
    def marks(self) -> Mapping[tuple[str, int], tuple[str, int]]:
        """(topic, partition) -> (epoch, highest offset seen): a read-only view."""
        return MappingProxyType(self._marks)

    def fresh(self, events: Iterable[Event]) -> list[Event]:
        """The events not seen before, in order; the others are counted as duplicates."""
        marks = self._marks
        out = []
        for e in events:
            key = (e.topic, e.partition)
            mark = marks.get(key)
            if mark is not None:
                epoch, high = mark
                if e.epoch != epoch and e.epoch not in UNKNOWN and epoch not in UNKNOWN:
                    if e.epoch in self._retired.get(key, ()):
                        metrics.EVENTS_DUPLICATE.inc()  # late event of the old log
                        continue
                    else:
                        self._reset(key, epoch, high, e)
                        out.append(e)
                        continue
                elif e.offset <= high:
                    # (A mark of unknown identity meeting a known one is the
                    # same log, now identified, as in raise_to: compared by
                    # offset, it takes the epoch. Taken for a new log, it let
                    # a restarted shard's re-read through as live: issue 22.)
                    if epoch in UNKNOWN and e.epoch not in UNKNOWN:
                        marks[key] = (e.epoch, high)
                    metrics.EVENTS_DUPLICATE.inc()
                    continue
                marks[key] = (epoch if e.epoch in UNKNOWN else e.epoch, e.offset)
            else:
                marks[key] = (e.epoch, e.offset)
            out.append(e)
        return out

    def raise_to(self, topic: str, partition: int, epoch: str, offset: int) -> bool:
        """
        Count every offset of the partition up to C{offset} as seen (a starting
        shard read them back from Kafka: L{odin_ws.shard.kafka.warmup}), never
        lowering a mark. A mark of another known incarnation (or an unknown
        C{epoch} against a known one) is left alone. True when it was raised.
        """
        key = (topic, partition)
        mark = self._marks.get(key)
        if mark is None:
            self._marks[key] = (epoch, offset)
            return True
        old, high = mark
        if old != epoch and old not in UNKNOWN:
            return False
        if offset <= high:
            return False
        self._marks[key] = (old if epoch in UNKNOWN else epoch, offset)
        return True

    def exported(self) -> bytes:
        """
        The marks as JSON, for a shard that (re)starts: the hub's tell it
        what the node has relayed already (L{adopt}).
        """
        return json.dumps([{"topic": topic, "partition": partition, "epoch": epoch,
                            "offset": offset}
                           for (topic, partition), (epoch, offset) in self._marks.items()],
                          separators=(",", ":")).encode()

    def adopt(self, data: bytes) -> int:
        """
        Count as seen what another holder's L{exported} marks say (each
        through L{raise_to}: never lowered, another incarnation left alone).
        Returns how many marks rose. Raises ValueError for data that is not
        such an export.
        """
        try:
            marks = json.loads(data)
            raised = [self.raise_to(str(m["topic"]), int(m["partition"]), str(m["epoch"]),
                                    int(m["offset"])) for m in marks]
        except (TypeError, KeyError, UnicodeDecodeError) as e:
            raise ValueError(f"not exported marks: {e}") from e
        return sum(raised)

    def _reset(self, key: tuple[str, int], old: str, high: int, e: Event) -> None:
        self._marks[key] = (e.epoch, e.offset)
        self._retired[key] = (old, *self._retired.get(key, ()))[:RETIRED_KEPT]
        metrics.OFFSET_RESETS.labels(reason="topic_changed").inc()
        if (e.topic, e.epoch) not in self._audited:
            self._audited.add((e.topic, e.epoch))
            audit.warn(
                "{where}: topic {topic} changed (epoch {old} -> {new}: recreated, broker "
                "replaced or another cluster); de-duplication marks reset for its "
                "partitions (partition {partition} was at offset {high}, now {offset})",
                where=self.where, topic=e.topic, old=old, new=e.epoch,
                partition=e.partition, high=high, offset=e.offset)
