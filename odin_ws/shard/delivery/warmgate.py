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
enough; or it ran out of time, or failed, before reading any) waits until
the warm-up ends; then, with nothing read back to tell the past, what was
produced before the shard started is the past (the rule the backfill uses
where no mark is known): its events are kept for recovery, not delivered
live, until the partition's first event produced since. A partition that
already has a mark (the hub's, on a node of several shards) never waits.

A partition without a mark that first appears once the warm-up has ended
(a later rebalance gives it to this shard: the node's other shard died, the
group re-formed, the warm-up failed before the broker was back, partitions
were added) waits the same way for a warm-up of its own (L{warm_late}:
L{odin_ws.shard.kafka.warmup.HistoryWarmup.warm}, bounded by the same
C{history.warmup_timeout}, with the same rules); if that hands nothing
over (L{late_done}), the past by time as above. Before, its re-read from
an old commit reached clients as live events (issue 22).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from twisted.internet.defer import Deferred, gatherResults, maybeDeferred

from odin_ws.common.events import Event, Partition

#: What a batch's part is handed to once it may go on.
Take = Callable[[list[Event]], "Deferred[Any] | None"]


class WarmGate:
    """
    Per partition, batches wait for the partition's warm-up.

    @param marks: the shard's de-duplication marks (L{odin_ws.common.highwater.HighWater.marks}):
        a partition with a mark never waits.
    @param past: takes events of the past (kept for recovery, not live).
    @param started_ms: when the shard started (ms): what was produced before is the past.
    """

    def __init__(self, marks: Mapping[tuple[str, int], tuple[str, int]],
                 past: Callable[[list[Event]], None], started_ms: int):
        self._marks = marks
        self._past = past
        self.started_ms = started_ms
        self._closed = False
        # Whether the warm-up ran (closed, then opened): from then on a
        # partition without a mark is late (see the module).
        self._ran = False
        #: Asks for the warm-up of late partitions (None: they go by time).
        self.warm_late: Callable[[set[Partition]], None] | None = None
        # Partitions the warm-up ended without: the past by time (see above).
        self._by_time: set[Partition] = set()
        # Per waiting partition: its parts (where they go, the events, what
        # fires once taken), in arrival order.
        self._waiting: dict[Partition, list[tuple[Take, list[Event], Deferred[Any]]]] = {}

    @property
    def closed(self) -> bool:
        """Whether partitions without a mark wait (the warm-up runs)."""
        return self._closed

    def close(self) -> None:
        """The warm-up starts: partitions without a mark wait from now on."""
        self._closed = True
        self._ran = True

    def stop(self) -> None:
        """The shard stops: nothing waits any more, now or later (L{open})."""
        self._ran = False
        self.open()

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
        closed = self._closed
        if not closed and (not self._ran or not self._unmarked(events)):
            if self._by_time:
                events = self._present(events)
                if not events:
                    return None
            return take(events)
        marks = self._marks
        waiting = self._waiting
        by_time = self._by_time
        parts: dict[Partition, list[Event]] | None = None
        now: list[Event] = []
        for e in events:
            key = Partition(e.topic, e.partition)
            if key in waiting or (key not in marks and key not in by_time):
                if parts is None:
                    parts = {}
                parts.setdefault(key, []).append(e)
            else:
                now.append(e)
        if parts is None:
            return take(events)
        taken: list[Deferred[Any]] = []
        if now and not closed and by_time:
            now = self._present(now)
        if now:
            taken.append(maybeDeferred(take, now))
        late = None if closed else {key for key in parts if key not in waiting}
        for key, part in parts.items():
            later: Deferred[Any] = Deferred()
            waiting.setdefault(key, []).append((take, part, later))
            taken.append(later)
        if late:
            if self.warm_late is not None:
                self.warm_late(late)
            else:
                self.late_done(late)
        return gatherResults(taken, consumeErrors=True)

    def _unmarked(self, events: list[Event]) -> bool:
        """
        Whether a partition of C{events} waits or has no mark (nor goes by
        time): one test per run of events of one partition, as a batch
        comes (the warm-up has ended: this is every batch's path).
        """
        marks = self._marks
        waiting = self._waiting
        by_time = self._by_time
        topic = None
        partition = -1
        for e in events:
            if e.partition != partition or e.topic != topic:
                topic = e.topic
                partition = e.partition
                key = (topic, partition)
                if key in waiting or (key not in marks and key not in by_time):
                    return True
        return False

    def late_done(self, partitions: set[Partition]) -> None:
        """
        The warm-up of late C{partitions} ended: those it did not hand over
        (L{warmed}) go on, past their past by time (as after L{open}).
        """
        waiting = self._waiting
        for key in partitions:
            parts = waiting.pop(key, None)
            if parts is None:
                continue
            self._by_time.add(key)
            self._run([(take, self._present(part), later) for take, part, later in parts])

    def warmed(self, topic: str, partition: int) -> None:
        """The warm-up handed the partition over: what waited for it goes on."""
        self._run(self._waiting.pop(Partition(topic, partition), []))

    def open(self) -> None:
        """
        The warm-up ended: nothing waits any more; what waited goes on,
        past the past of partitions it did not hand over.
        """
        self._closed = False
        waiting, self._waiting = self._waiting, {}
        self._by_time.update(waiting)
        for parts in waiting.values():
            self._run([(take, self._present(part), later) for take, part, later in parts])

    def _present(self, events: list[Event]) -> list[Event]:
        """C{events} but the past of partitions without a warm-up (it goes to L{_past})."""
        by_time = self._by_time
        started = self.started_ms
        past: list[Event] = []
        now: list[Event] = []
        for e in events:
            key = Partition(e.topic, e.partition)
            if key in by_time:
                if e.ts < started:
                    past.append(e)
                    continue
                by_time.discard(key)
            now.append(e)
        if past:
            self._past(past)
        return now

    def _run(self, parts: list[tuple[Take, list[Event], Deferred[Any]]]) -> None:
        # A failing part fails its batch's Deferred (logged by the consumer),
        # and the parts after it go on.
        for take, part, later in parts:
            if part:
                maybeDeferred(take, part).chainDeferred(later)
            else:   # all of it was the past
                later.callback(None)
