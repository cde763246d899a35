"""
Where a starting shard knows nothing of a partition's past (L{WarmGate}):
no de-duplication mark for it, neither from the hub (a node of one shard
relays nothing; after a whole-node restart the hub starts empty) nor from
what it delivered itself. The group consumer re-reads such a partition from
its last commit (a kill -9 commits nothing; C{start_offset: earliest} reads
from the start), and without the gate that re-read reached clients as live
events (issue 22). Until the history warm-up (L{odin_ws.shard.kafka.warmup})
has handed the partition over, which raises its mark to the offset it read
through, its batches wait, in order, per partition: then the re-read is
de-duplicated against that mark (at or below it: history, not live), and
what is newer is delivered as live.

A partition the warm-up has nothing to hand over for (no record young
enough) waits until the warm-up ends. A partition that already has a mark
(the hub's, on a node of several shards) never waits.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

from twisted.internet.defer import Deferred, gatherResults, maybeDeferred
from twisted.logger import Logger

from odin_ws.common.events import Event, Partition

#: What a batch's part is handed to once it may go on.
Take = Callable[[list[Event]], "Deferred[Any] | None"]


class WarmGate:
    """
    Per partition, batches wait for the partition's warm-up.

    @param marks: the shard's de-duplication marks (L{odin_ws.common.highwater.HighWater.marks}):
        a partition with a mark never waits.
    """

    log = Logger()

    def __init__(self, marks: Mapping[tuple[str, int], tuple[str, int]]):
        self._marks = marks
        self._closed = False
        # Per waiting partition: its parts, in arrival order.
        self._waiting: dict[Partition, list[Callable[[], object]]] = {}

    @property
    def closed(self) -> bool:
        """Whether partitions without a mark wait (the warm-up runs)."""
        return self._closed

    def close(self) -> None:
        """The warm-up starts: partitions without a mark wait from now on."""
        self._closed = True

    def waiting(self) -> int:
        """Partitions with batches waiting."""
        return len(self._waiting)

    def admit(self, events: list[Event], take: Take) -> Deferred[Any] | None:
        """
        Hand C{events} to C{take}: at once those of partitions that need not
        wait, the others once their partition is warmed (L{warmed}) or the
        warm-up ended (L{open}), in order. The result fires once every part
        was taken (C{None}: all were, at once).
        """
        if not self._closed:
            return take(events)
        marks = self._marks
        waiting = self._waiting
        parts: dict[Partition, list[Event]] | None = None
        now: list[Event] = []
        for e in events:
            key = Partition(e.topic, e.partition)
            if key in waiting or key not in marks:
                if parts is None:
                    parts = {}
                parts.setdefault(key, []).append(e)
            else:
                now.append(e)
        if parts is None:
            return take(events)
        taken: list[Deferred[Any]] = []
        if now:
            taken.append(maybeDeferred(take, now))
        for key, part in parts.items():
            later: Deferred[Any] = Deferred()
            waiting.setdefault(key, []).append(functools.partial(_take, take, part, later))
            taken.append(later)
        return gatherResults(taken, consumeErrors=True)

    def warmed(self, topic: str, partition: int) -> None:
        """The warm-up handed the partition over: what waited for it goes on."""
        self._run(self._waiting.pop(Partition(topic, partition), ()))

    def open(self) -> None:
        """The warm-up ended: nothing waits any more; what waited goes on."""
        self._closed = False
        waiting, self._waiting = self._waiting, {}
        for parts in waiting.values():
            self._run(parts)

    def _run(self, parts: Any) -> None:
        for work in parts:
            try:
                work()
            except Exception:   # noqa: BLE001 - the parts after it must not stay waiting
                self.log.failure("a batch that waited for the warm-up failed")


def _take(take: Take, part: list[Event], later: Deferred[Any]) -> None:
    maybeDeferred(take, part).chainDeferred(later)
