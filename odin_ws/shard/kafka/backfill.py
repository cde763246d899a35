"""
Where the start's read-back of the recent past (L{odin_ws.shard.kafka.warmup})
meets live delivery (L{Backfill}): what the warm-up read joins the history,
the de-duplication marks rise past it, and the group consumer's re-read of
the same offsets is relayed but not delivered twice (docs/operations.md,
"History, recovery and snapshots").
"""

from __future__ import annotations

import time
from typing import Protocol

from twisted.logger import Logger

from odin_ws.common import metrics
from odin_ws.common.events import Event, Partition
from odin_ws.common.highwater import HighWater
from odin_ws.shard.history.store import History
from odin_ws.shard.kafka.warmread import WarmedPartition, WarmupReport, WarmupState


class LiveDelivery(Protocol):
    """What the backfill needs of the shard's delivery path."""

    @property
    def seen(self) -> HighWater: ...

    @property
    def history(self) -> History: ...

    def deliver_fresh(self, events: list[Event], relayed: bool = False) -> None: ...


#: A partition without a mark (never below anything).
_NO_MARK = ("", -1)


class Backfill:
    """
    Joins each partition the warm-up read to the history and the marks, and
    tells which consumed batches re-read offsets it counted as seen.
    """

    log = Logger()

    def __init__(self, delivery: LiveDelivery):
        self._delivery = delivery
        #: What was produced before this moment (ms) is the past.
        self.started_ms = int(time.time() * 1000)
        # Partitions whose marks the warm-up raised -> to which offset, until
        # this shard's consumer passes it or another shard relayed past it
        # (see rereading).
        self._rereads: dict[Partition, int] = {}

    def backfill(self, warmed: WarmedPartition) -> None:
        """
        What the warm-up read back of one partition. It joins the history only
        where it meets what live delivery brought meanwhile (its own consumer's
        and the hub's); then the shard counts every offset it read as seen, so
        the group consumer's re-read of them (a restarted node resumes from its
        committed offsets) is not delivered again as live: clients that missed
        them recover them. Events produced since this shard started, and those
        past what live delivery brought already, are delivered now, as live
        delivery would have: in order, once. Where live delivery is behind with
        a gap, or knows another incarnation of the topic, the backfill is left
        out.
        """
        delivery = self._delivery
        seen = delivery.seen
        key = Partition(warmed.topic, warmed.partition)
        events = warmed.events
        through = warmed.through
        metrics.HISTORY_WARMED.inc(len(events))
        mark = seen.marks.get(key)
        if mark is not None:
            epoch, high = mark
            if epoch != warmed.epoch or high < warmed.start - 1:
                return
            live = next((i for i, e in enumerate(events) if e.offset > high), len(events))
        else:
            live = next((i for i, e in enumerate(events) if e.ts >= self.started_ms),
                        len(events))
        past, now = events[:live], events[live:]
        if past:
            delivery.history.backfill(past, {key: now[0].offset - 1 if now else through})
        if now:
            delivery.deliver_fresh(seen.fresh(now))
        raised = seen.raise_to(warmed.topic, warmed.partition, warmed.epoch, through)
        # A position only (nothing young enough was there to read): its
        # re-read is as old for every shard, nothing to relay whole, and
        # no bookkeeping to look at per batch until it is passed.
        if (raised and events) or now:
            self._rereads[key] = through

    def rereading(self, events: list[Event]) -> bool:
        """
        Whether the batch re-reads offsets the warm-up counted as seen here.
        Such a batch is relayed whole all the same: another shard's warm-up
        may have stopped short of them (each took its own high watermark),
        and the hub drops what it relayed before.

        A partition's bookkeeping lasts until this consumer passes what the
        warm-up read, or until another shard relayed past it (the mark rose
        above it: that shard read from the last commit, so it relayed all
        the warm-up read too). Not while the partition is merely not
        assigned: a restarted shard gets the dead one's partitions back in
        several rebalance steps, and forgetting the later ones there lost
        their re-read for every other shard's clients (issue 22).
        """
        rereads = self._rereads
        if not rereads:
            return False
        marks = self._delivery.seen.marks
        for key in [k for k, until in rereads.items()
                    if marks.get(k, _NO_MARK)[1] > until]:
            del rereads[key]
        found = False
        for e in events:
            key = Partition(e.topic, e.partition)
            until = rereads.get(key)
            if until is not None:
                if e.offset <= until:
                    found = True
                else:
                    del rereads[key]   # the consumer is past what the warm-up read
        return found

    def warmed(self, report: WarmupReport,
               late: set[tuple[str, int]] | None = None) -> None:
        """The warm-up ended (of C{late} partitions, first seen after the start's): one line."""
        if late is not None:
            self.log.info("history warmed for {late} partition(s) first seen after the "
                          "warm-up: {events} events of {partitions} in {seconds:.1f} s "
                          "({state}{error})", late=len(late), events=report.events,
                          partitions=report.partitions, seconds=report.seconds,
                          state=report.state, error=f": {report.error}" if report.error else "")
        elif report.state is WarmupState.DONE:
            self.log.info("history warmed: {events} events of {partitions} partitions in "
                          "{seconds:.1f} s{cut}", events=report.events,
                          partitions=report.partitions, seconds=report.seconds,
                          cut=(f" ({report.incomplete} read in part: history.warmup_timeout)"
                               if report.incomplete else ""))
        elif report.state is WarmupState.FAILED:
            self.log.warn("history warm-up failed after {seconds:.1f} s ({error}); "
                          "{events} events of {partitions} partitions warmed",
                          seconds=report.seconds, error=report.error, events=report.events,
                          partitions=report.partitions)
