"""
The hub: relays event batches from the shard that consumed them to every
other shard, exactly once per shard, without letting a slow or dead shard
hold anyone else up.

Each attached shard has an outlet: a bounded queue and at most one Deliver
in flight. While a Deliver is in flight new batches queue up; when it
answers, everything queued (up to L{MERGE_BYTES}) goes in the next Deliver,
in order. When the queue holds more than its bound in batches or in bytes
the oldest batches are dropped and counted (the newest one is always kept,
however large: one batch is at most what one Deliver carries).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from odin_ws.common import metrics
from odin_ws.common.events import decode_batch, encode_batch
from odin_ws.common.highwater import HighWater

#: Queued batches are merged into one Deliver up to about this many bytes
#: (fewer AMP round trips; a single larger batch is still sent whole).
MERGE_BYTES = 1 << 20

#: Default bound of the bytes queued per shard (hub.max_queue_bytes).
MAX_QUEUE_BYTES = 64 << 20

#: A Deliver unanswered this long makes the hub warn (once per stall).
STALL_WARN_SECONDS = 5.0

Send = Callable[[bytes], Deferred]


class _Outlet:
    """The hub's queue towards one shard."""

    __slots__ = ("index", "send", "queue", "size", "busy", "pumping", "sent_at", "warned",
                 "label")

    def __init__(self, index: int, send: Send):
        self.index = index
        self.send = send
        self.queue: deque[bytes] = deque()
        #: Bytes in C{queue}.
        self.size = 0
        self.busy = False
        self.pumping = False
        self.sent_at = 0.0
        self.warned = False
        self.label = str(index)


class Hub:
    """
    Relay of event batches between shards (lives in the parent).

    @param reactor: an L{IReactorTime}, to notice stalled shards.
    @param max_event_bytes: larger events are not relayed (the consuming
        shard delivered them to its own clients already).
    @param max_queue_batches: batches queued per shard before the oldest
        is dropped.
    @param max_queue_bytes: bytes queued per shard before the oldest
        batches are dropped.
    """

    log = Logger()

    def __init__(self, reactor: IReactorTime, max_event_bytes: int, max_queue_batches: int,
                 max_queue_bytes: int = MAX_QUEUE_BYTES):
        self._clock = reactor
        self.max_event_bytes = max_event_bytes
        self.max_queue_batches = max_queue_batches
        self.max_queue_bytes = max_queue_bytes
        self._outlets: dict[int, _Outlet] = {}
        # Highest offset relayed per partition: a partition that moves to
        # another shard may be re-read from its last commit (reset when the
        # partition's log is a new one: see HighWater).
        self._high = HighWater("hub")

    # -- membership -------------------------------------------------------

    def attach(self, index: int, send: Send) -> None:
        """
        Start relaying to shard C{index} through C{send(batch) -> Deferred}.
        Replaces an earlier attachment of the same index (a restarted shard).
        """
        self._outlets[index] = _Outlet(index, send)
        metrics.HUB_QUEUE.labels(shard=str(index)).set(0)

    def detach(self, index: int) -> None:
        """Stop relaying to shard C{index} and forget what was queued for it."""
        outlet = self._outlets.pop(index, None)
        if outlet is not None:
            outlet.queue.clear()
            outlet.size = 0
            metrics.HUB_QUEUE.labels(shard=outlet.label).set(0)

    @property
    def attached(self) -> list[int]:
        """Indexes of the shards currently relayed to."""
        return sorted(self._outlets)

    def relayed(self) -> bytes:
        """
        The highest offset relayed per partition (L{HighWater.exported}),
        for a shard that attaches: what the node delivered before it came
        must not reach its clients again when the group has it re-read a
        partition from an older commit (L{odin_ws.shard.delivery.pipeline}).
        """
        return self._high.exported()

    def queued(self, index: int) -> int:
        """Batches waiting for shard C{index} (not counting one in flight)."""
        outlet = self._outlets.get(index)
        return len(outlet.queue) if outlet else 0

    def queued_bytes(self, index: int) -> int:
        """Bytes waiting for shard C{index} (not counting a Deliver in flight)."""
        outlet = self._outlets.get(index)
        return outlet.size if outlet else 0

    # -- relay ------------------------------------------------------------

    def publish(self, from_index: int, batch: bytes) -> None:
        """
        Take a batch published by shard C{from_index} and queue it for every
        other attached shard. Returns at once; never waits for a shard.
        """
        out = self._filter(batch)
        if out is None:
            return
        data, count = out
        targets = [o for i, o in self._outlets.items() if i != from_index]
        if not targets:
            return
        metrics.HUB_RELAYED.inc(count)
        for outlet in targets:
            self._enqueue(outlet, data)

    def _filter(self, batch: bytes) -> tuple[bytes, int] | None:
        """The batch without duplicates and oversized events, and its event count."""
        try:
            events = decode_batch(batch)
        except (ValueError, UnicodeDecodeError):
            metrics.HUB_REJECTED.labels(reason="malformed").inc()
            self.log.warn("hub: dropped a malformed batch of {size} bytes", size=len(batch))
            return None
        kept = []
        for event in self._high.fresh(events):
            if len(event.envelope) > self.max_event_bytes:
                metrics.HUB_REJECTED.labels(reason="too_large").inc()
                continue
            kept.append(event)
        if not kept:
            return None
        if len(kept) == len(events):
            return batch, len(kept)
        return encode_batch(kept), len(kept)

    def _enqueue(self, outlet: _Outlet, data: bytes) -> None:
        queue = outlet.queue
        queue.append(data)
        outlet.size += len(data)
        dropped = 0
        while len(queue) > 1 and (len(queue) > self.max_queue_batches
                                  or outlet.size > self.max_queue_bytes):
            outlet.size -= len(queue.popleft())
            dropped += 1
        if dropped:
            metrics.HUB_DROPPED.labels(shard=outlet.label).inc(dropped)
            self._warn_stall(outlet)
        if outlet.busy:
            metrics.HUB_QUEUE.labels(shard=outlet.label).set(len(queue))
        else:
            self._pump(outlet)

    def _pump(self, outlet: _Outlet) -> None:
        # A Deliver may answer synchronously (fakes, or an already-failed
        # call); the loop below, not recursion, then sends the next one.
        if outlet.pumping:
            return
        outlet.pumping = True
        try:
            while not outlet.busy and outlet.queue and self._outlets.get(outlet.index) is outlet:
                data = self._take(outlet)
                outlet.busy = True
                outlet.sent_at = self._clock.seconds()
                try:
                    d = outlet.send(data)
                except Exception:
                    self.log.failure("hub: Deliver to shard {index} failed",
                                     index=outlet.index)
                    self._lost(outlet)
                    return
                d.addCallbacks(self._delivered, self._failed, callbackArgs=(outlet,),
                               errbackArgs=(outlet,))
        finally:
            outlet.pumping = False
        if self._outlets.get(outlet.index) is outlet:
            metrics.HUB_QUEUE.labels(shard=outlet.label).set(len(outlet.queue))

    @staticmethod
    def _take(outlet: _Outlet) -> bytes:
        """Pop queued batches, oldest first, merged up to MERGE_BYTES."""
        queue = outlet.queue
        first = queue.popleft()
        if not queue or len(first) + len(queue[0]) > MERGE_BYTES:
            outlet.size -= len(first)
            return first
        parts = [first]
        size = len(first)
        while queue and size + len(queue[0]) <= MERGE_BYTES:
            size += len(queue[0])
            parts.append(queue.popleft())
        outlet.size -= size
        return b"".join(parts)

    def _delivered(self, _result: object, outlet: _Outlet) -> None:
        outlet.busy = False
        outlet.warned = False
        self._pump(outlet)

    def _failed(self, reason, outlet: _Outlet) -> None:
        # The shard died or its channel broke; the supervisor re-attaches
        # a restarted shard. Nothing queued for this one can be delivered.
        if self._outlets.get(outlet.index) is outlet:
            self.log.warn("hub: Deliver to shard {index} failed ({why}); detaching",
                          index=outlet.index, why=reason.getErrorMessage())
            self._lost(outlet)

    def _lost(self, outlet: _Outlet) -> None:
        outlet.busy = False
        if self._outlets.get(outlet.index) is outlet:
            self.detach(outlet.index)

    def _warn_stall(self, outlet: _Outlet) -> None:
        if outlet.warned or not outlet.busy:
            return
        age = self._clock.seconds() - outlet.sent_at
        if age >= STALL_WARN_SECONDS:
            outlet.warned = True
            self.log.warn("hub: shard {index} has not answered a Deliver for {age:.1f}s; "
                          "dropping its oldest batches", index=outlet.index, age=age)
