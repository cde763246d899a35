"""
A trailing-edge throttle: at most one item per interval, never a drop of the
latest (issue 25, part 3, C{max_rate}).

Why trailing-edge: a rate-capped subscriber must end on the channel's latest
event, not on whatever passed the gate last. So the first item after a
quiet interval goes out at once (no added latency when the channel is
slow), items offered while an interval runs replace one pending item, and
that pending item goes out when the interval ends, which starts the next
interval. The last item emitted is therefore always the latest offered, at
most one interval after it was offered. Replaced items are counted
(C{replaced}), for the throttled-events metric.

One throttle serves one channel at one rate, whatever the number of
connections that share it (the plumbing keys them so): per-event work here
is a comparison and an assignment.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Generic, TypeVar

if TYPE_CHECKING:
    from twisted.internet.interfaces import IDelayedCall, IReactorTime

T = TypeVar("T")

_NOTHING = object()


class Throttle(Generic[T]):
    """
    Emits what it is offered through C{emit}, at most once per
    C{interval_seconds} of C{clock}, ending on the latest item (see the
    module's docstring).
    """

    def __init__(self, clock: IReactorTime, interval_seconds: float, emit: Callable[[T], object]):
        if not interval_seconds > 0:
            raise ValueError(f"interval_seconds must be positive, not {interval_seconds!r}")
        self.clock = clock
        self.interval = interval_seconds
        self.emit = emit
        #: Items offered but never emitted (a later one replaced them).
        self.replaced = 0
        self._pending: object = _NOTHING
        self._timer: IDelayedCall | None = None
        self._stopped = False

    @property
    def pending(self) -> bool:
        """Whether an item waits for the end of the running interval."""
        return self._pending is not _NOTHING

    def offer(self, item: T) -> None:
        """
        C{item} emitted now if no interval runs, else kept as the pending
        item (replacing the one there) until the interval ends. Nothing after
        L{stop}.
        """
        if self._stopped:
            return
        if self._timer is None:
            self._start()
            self.emit(item)
            return
        if self._pending is not _NOTHING:
            self.replaced += 1
        self._pending = item

    def stop(self) -> None:
        """No more emits: the running interval is cancelled and the pending item dropped."""
        self._stopped = True
        self._pending = _NOTHING
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _start(self) -> None:
        # Before emitting: an emit that raises leaves the throttle running
        # (the next item waits for this interval's end, as it should).
        self._timer = self.clock.callLater(self.interval, self._interval_over)

    def _interval_over(self) -> None:
        self._timer = None
        item, self._pending = self._pending, _NOTHING
        if item is not _NOTHING:
            self._start()
            self.emit(item)  # type: ignore[arg-type]
