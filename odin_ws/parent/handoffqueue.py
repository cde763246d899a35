"""
Upgrades waiting for a handoff slot.

A deploy's drain (close 4000) makes every client of a node reconnect at
once. Each upgrade is handed to a shard over its control channel, and a
shard gets at most C{supervisor.max_handoffs_in_flight} handoffs it has not
answered yet: that cap keeps a shard that stopped answering from collecting
descriptors, but in a storm a healthy shard reaches it for a few
milliseconds at a time. Refusing those upgrades with 503 turned a burst of
legitimate clients into a burst of retries (2,000 at once to one shard: 175
accepted, 1,825 refused). So an upgrade that finds every shard with room
only momentarily busy waits here, first come first served, and is placed
when a handoff completes and frees a slot.

What bounds the wait: a waiting connection is still one the parent holds
before its upgrade, so it counts against C{listen.max_heads} (and its IP's
C{listen.max_heads_per_ip}), and it keeps its head timer
(C{listen.head_timeout} from its accept): past it, it is answered 503
C{wait_timeout}. Nothing waits for a shard that cannot take it: a stalled
shard (stale stats), a full one or a draining node refuse at once, and the
queue re-checks on a short tick, so a shard that stalls while clients wait
turns them away within that tick instead of at their timeout.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Protocol

from odin_ws.common import metrics

#: Seconds between re-checks while connections wait. Slots normally free on
#: handoff answers (L{HandoffQueue.pump}); the tick catches what frees none:
#: a shard that stalls, a live reload of the cap, a drain.
RECHECK_INTERVAL = 0.5


class Waiter(Protocol):
    """A connection in the queue (the dispatcher's protocol)."""

    def try_place(self) -> bool:
        """Hand over or refuse now and return True, or return False to keep waiting."""


class HandoffQueue:
    """
    Connections waiting for a handoff slot, in arrival order. The owner
    calls L{join} when an upgrade must wait, L{pump} when a slot may have
    freed, L{leave} when a waiting connection closed and L{timed_out} when
    its head timer fired.
    """

    def __init__(self, reactor: Any):
        self._reactor = reactor
        #: Each waiter and when it joined; ordered, with O(1) removal anywhere.
        self._waiting: OrderedDict[Waiter, float] = OrderedDict()
        self._tick: Any = None
        self._pumping = False

    def __len__(self) -> int:
        return len(self._waiting)

    def __contains__(self, waiter: object) -> bool:
        return waiter in self._waiting

    def join(self, waiter: Waiter) -> None:
        """C{waiter} waits behind those already waiting."""
        self._waiting[waiter] = self._reactor.seconds()
        metrics.HANDOFF_WAITING.inc()
        self._arm()

    def leave(self, waiter: Waiter) -> bool:
        """C{waiter} no longer waits (its client went away): True if it did."""
        if self._waiting.pop(waiter, None) is None:
            return False
        metrics.HANDOFF_WAITING.dec()
        if not self._waiting:
            self.close()
        return True

    def timed_out(self, waiter: Waiter) -> bool:
        """C{waiter}'s head timer fired while it waited: counted; True if it did wait."""
        if not self.leave(waiter):
            return False
        metrics.HANDOFF_WAIT_TIMEOUTS.inc()
        return True

    def pump(self) -> None:
        """
        Let waiters through from the front while they can go: each is handed
        over or refused; the first that must still wait stops the pass (the
        ones behind it would find no slot either, and must not overtake it).
        """
        if self._pumping:  # a waiter's refusal can close it and call back in here
            return
        self._pumping = True
        try:
            while self._waiting:
                waiter, joined = next(iter(self._waiting.items()))
                if not waiter.try_place():
                    break
                if self.leave(waiter):
                    metrics.HANDOFF_WAIT_SECONDS.observe(
                        max(0.0, self._reactor.seconds() - joined))
        finally:
            self._pumping = False
        self._arm()

    def close(self) -> None:
        """Stop the re-check tick (the dispatcher closes; its waiters end with their connections)."""
        if self._tick is not None and self._tick.active():
            self._tick.cancel()
        self._tick = None

    def _arm(self) -> None:
        if not self._waiting:
            self.close()
        elif self._tick is None or not self._tick.active():
            self._tick = self._reactor.callLater(RECHECK_INTERVAL, self._recheck)

    def _recheck(self) -> None:
        self._tick = None
        self.pump()
