"""
Holding a recovery until this shard can answer it truly (issue 22): a
subscribe's C{since} that the shard's history cannot answer yet, only
because the shard has not loaded or caught up on a partition, waits (at most
C{history.recovery_hold} seconds), then is answered as things stand
(docs/protocol.md, "Positions and recovery").

Answering at once was false in two cases, both after a shard kill: clients of
the killed shard reconnected to its restarted process while its warm-up was
still reading the past back and got C{unknown_partition}, or C{too_old} for
events that were never loaded (20 of 29 in the fault run); and a client that
reconnected to the other shard before the dead shard's partition was
consumed again there got C{ahead}, then the re-read events as live.

A position waits while:
  - the shard's history holds nothing of its partition and the warm-up is
    still reading (it may bring it);
  - it is below what the history holds, where that is only where live
    delivery began, and the warm-up is still reading;
  - it is past what this shard has seen of the partition (the node has not
    consumed it yet: a rebalance, a restarted shard's re-read, a node behind).
Every other answer (recovered, too old for the history's window, another
epoch, too large) does not change by waiting and is made at once.

Held requests are looked at every L{POLL} seconds (one timer for all of them,
running only while one waits): the answer is then made in one reactor turn
as any other (ack, replay, live), so waiting adds no gap and no duplicate.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import task

from odin_ws.common import metrics
from odin_ws.common.events import Partition
from odin_ws.shard.history.store import History

#: Seconds between two looks at the held recoveries.
POLL = 0.05

#: C{(topic, partition) -> (epoch, offset)}: the positions of a subscribe.
Since = dict[tuple[str, int], tuple[str, int]]


class HeldRecovery:
    """One waiting recovery; L{cancel} when its connection goes."""

    __slots__ = ("since", "resume", "since_time", "deadline", "_hold")

    def __init__(self, hold: RecoveryHold, since: Since, resume: Callable[[], None],
                 now: float, deadline: float):
        self._hold: RecoveryHold | None = hold
        self.since = since
        self.resume = resume
        self.since_time = now
        self.deadline = deadline

    def cancel(self) -> None:
        """The client left: never resume, count it."""
        hold, self._hold = self._hold, None
        if hold is not None:
            hold.drop(self, "gone")


class RecoveryHold:
    """
    The shard's held recoveries.

    @param history: the shard's history (what a recovery is answered from).
    @param warming: whether the warm-up is still reading the past back.
    @param bound: C{history.recovery_hold}, read at each hold (live).
    """

    def __init__(self, reactor: Any, history: History, warming: Callable[[], bool],
                 bound: Callable[[], float]):
        self._reactor = reactor
        self._history = history
        self._warming = warming
        self._bound = bound
        self._held: list[HeldRecovery] = []
        self._loop = task.LoopingCall(self._look)
        self._loop.clock = reactor

    def __len__(self) -> int:
        return len(self._held)

    def waits(self, since: Since, until: float | None = None) -> bool:
        """
        Whether the answer to C{since} may become true by waiting (see the
        module), if it may wait (until C{until}, reactor seconds, if given).
        """
        if not since or self._bound() <= 0:
            return False
        if until is not None and self._reactor.seconds() >= until:
            return False
        history = self._history
        warming = self._warming()
        for key, (epoch, offset) in since.items():
            log = history.log(Partition(*key))
            if log is None:
                if warming:
                    return True
                continue
            if log.epoch != epoch:
                continue
            if offset > log.high:
                return True
            if offset < log.floor and warming and not log.windowed:
                return True
        return False

    def hold(self, since: Since, resume: Callable[[], None],
             until: float | None = None) -> HeldRecovery:
        """
        Call C{resume()} once C{since} can be answered truly, or after the
        bound (or at C{until} if sooner: then it is answered as things
        stand); in a later reactor turn.
        """
        now = self._reactor.seconds()
        deadline = now + self._bound()
        held = HeldRecovery(self, since, resume, now,
                            deadline if until is None else min(deadline, until))
        self._held.append(held)
        metrics.RECOVERIES_WAITING.inc()
        if not self._loop.running:
            self._loop.start(POLL, now=False)
        return held

    def drop(self, held: HeldRecovery, outcome: str) -> None:
        """Forget C{held} (answered, timed out or gone) and count it."""
        try:
            self._held.remove(held)
        except ValueError:
            return
        metrics.RECOVERIES_WAITING.dec()
        metrics.RECOVERIES_HELD.labels(outcome=outcome).inc()
        metrics.RECOVERY_HOLD_SECONDS.observe(self._reactor.seconds() - held.since_time)
        if not self._held and self._loop.running:
            self._loop.stop()

    def _look(self) -> None:
        now = self._reactor.seconds()
        for held in list(self._held):
            if held._hold is None:
                continue
            if not self.waits(held.since):
                outcome = "answered"
            elif now >= held.deadline:
                outcome = "timed_out"
            else:
                continue
            held._hold = None
            self.drop(held, outcome)
            held.resume()
