"""
How the consumer thread's batches reach the reactor (L{Handover}).

The consumer thread polls one batch at a time: the first record it waits
for, with whatever else is already fetched (C{kafka.poll_batch}). With
records arriving one at a time and a reactor busy delivering, each poll is
a batch of one, and each batch was its own call into the reactor: its own
round of sends to every connection it reaches, however many batches were
queued behind it. The batches queued behind a busy reactor are now taken
together, as one delivery: one round, one send per connection carrying
all their frames, which is what burst mode gets from one poll. A reactor
that keeps up still takes each batch alone, at once.

A delivery takes at most C{kafka.poll_batch} events: what one poll may
take is what one delivery may take. Each batch's id goes back on the done
queue once the delivery that took it has (the consumer thread stores
offsets per batch, in order).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.logger import Logger

from odin_ws.common import metrics
from odin_ws.common.events import Event

log = Logger()


class Handover:
    """
    Batches handed over by the consumer thread (L{give}), taken by the
    reactor in order, those queued together as one delivery (L{_take}).

    @param reactor: provides C{callFromThread}.
    @param deliver: the reactor side of a delivery (the shard's on_batch).
    @param done: batch ids go back to the consumer thread here.
    @param limit: the most events one delivery takes (C{kafka.poll_batch});
        a batch larger than that is still taken whole, alone.
    """

    def __init__(self, reactor: Any, deliver: Callable[[list[Event]], Deferred | None],
                 done: queue.SimpleQueue[int], limit: int):
        self._reactor = reactor
        self.deliver = deliver
        self._done = done
        self._limit = max(1, limit)
        self._lock = threading.Lock()
        # Handed over, not yet taken; a take is scheduled while it is not empty.
        self._queued: list[tuple[int, list[Event]]] = []

    @property
    def waiting(self) -> int:
        """Batches handed over and not yet taken by the reactor."""
        with self._lock:
            return len(self._queued)

    def give(self, batch_id: int, events: list[Event]) -> None:
        """Consumer thread: hand a batch over; its id comes back on the done queue."""
        with self._lock:
            self._queued.append((batch_id, events))
            if len(self._queued) > 1:
                return      # the take scheduled for the first one takes it too
        self._reactor.callFromThread(self._take)

    def _take(self) -> None:
        """Reactor: deliver the batches queued, up to the limit, in one delivery."""
        with self._lock:
            queued = self._queued
            ids = [queued[0][0]]
            events = queued[0][1]
            count = len(events)
            taken = 1
            while taken < len(queued) and count + len(queued[taken][1]) <= self._limit:
                if taken == 1:
                    events = list(events)
                batch_id, more = queued[taken]
                ids.append(batch_id)
                events.extend(more)
                count += len(more)
                taken += 1
            del queued[:taken]
            again = bool(queued)
        if taken > 1:
            metrics.KAFKA_BATCHES_JOINED.inc(taken - 1)
        if again:   # what the limit left goes next, before later batches join it
            self._reactor.callFromThread(self._take)
        d = maybeDeferred(self.deliver, events)
        d.addErrback(lambda f: log.failure("on_batch failed for {n} events", f, n=count))
        d.addBoth(self._finished, ids)

    def _finished(self, _: object, ids: list[int]) -> None:
        for batch_id in ids:
            self._done.put(batch_id)
