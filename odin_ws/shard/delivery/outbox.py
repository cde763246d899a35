"""
One connection's outbound side, L{Outbox}: its queue and write path
(L{odin_ws.shard.delivery.outqueue}), catch-up from history for a client
that fell behind (L{odin_ws.shard.delivery.catchup}), and here the
slow-client policies (C{outbound.policy}: drop, conflate, disconnect)
that decide what happens to a frame that does not fit.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from odin_ws.shard.delivery.catchup import CatchingUp
from odin_ws.shard.delivery.frames import Chunk
from odin_ws.shard.delivery.gaps import CONFLATED, DROPPED, conflated_notice
from odin_ws.shard.delivery.outqueue import Flusher, OutboxHolder
from odin_ws.shard.history.holes import UNDECODABLE, is_hole

if TYPE_CHECKING:
    from odin_ws.common.events import Event

__all__ = ["Flusher", "Outbox", "OutboxHolder"]


class Outbox(CatchingUp):
    """
    The outbound side of one WebSocket connection (create it when the
    connection opens). Frames pushed in a reactor turn leave in one write;
    while the client is slow they wait here, bounded by C{limit} bytes
    (Twisted's held bytes included), and the event type's policy applies
    past it. When nothing waits at all, one frame is taken whatever its
    size. Per-channel order is kept under every policy:

      - drop: with a C{backlog} (WebSocket connections), the Outbox falls
        behind (L{odin_ws.shard.delivery.catchup}): it takes no more
        frames, notes per stream where it stopped, and once its socket
        drains it sends what it missed from the shard's history, then live
        again; a stream history cannot serve gets a gap notice. Without a
        backlog the new frame is discarded;
      - conflate: the channel's waiting frames give way to the new one; it
        is dropped if none of its channel waits here or it still does not fit;
      - disconnect: as drop, and if the connection is still over the limit
        (or behind) C{grace} seconds after it first was, or history cannot
        serve it, the Outbox closes and calls C{on_slow_disconnect} (once).

    Drops and conflations are counted in L{WriteStats} (frames discarded
    because the connection closes are not). A change of C{limit} (see
    L{reconfigure}) takes effect at the next flush.

    The queue, its write path and the attributes the fan-out reads are
    L{odin_ws.shard.delivery.outqueue.OutboxCore}'s; catch-up is
    L{odin_ws.shard.delivery.catchup.CatchingUp}'s.
    """

    __slots__ = ()

    def overflow(self, frame: bytes, channel: str, event_type: str, size: int,
                 event: Event | None = None) -> None:
        """
        The slow path of a push: C{frame} (C{size} bytes, of C{event} if it
        is one) does not fit in the C{room} last computed. Behind: noted;
        else re-read Twisted's held bytes, then queue it or apply the event
        type's policy.
        """
        if self.closed:
            return
        behind = self.behind
        if behind is not None:
            if event is not None:
                behind.note(event)
            else:
                # Not an event of history (a snapshot's): small, bounded
                # by its subscribe, and not to be caught up: queued.
                self._accept(frame, channel, size)
            return
        self._settle()
        if size <= self.room or self.room == self.limit:
            # Nothing waits for this connection (self.room == self.limit: no
            # queued frame, no byte held by Twisted), so it takes the frame
            # whatever its size: a record above the limit (kafka.max_record_bytes
            # may be up to the limit, the envelope adds a little) still
            # reaches every client that keeps up, and is not counted as a
            # slow-client drop nor, under disconnect, held against it.
            self._accept(frame, channel, size)
            return
        policy = self.policy_for(event_type)
        stats = self.stats
        if event is not None and self.backlog is not None and policy != "conflate":
            self.fall_behind(event, policy == "disconnect")
            return
        if policy == "conflate":
            if not self._conflate(frame, channel, size):
                if event is not None and self.backlog is not None:
                    # Nothing of its channel waits to give way: caught up
                    # from history rather than lost.
                    self.fall_behind(event)
                    return
                stats.dropped["conflate"] += 1
                if self.drops is not None and event is not None:
                    self._tell_drop(event)
        elif policy == "disconnect":
            clock = self.fanout.reactor
            if self._over_since is None:
                self._over_since = clock.seconds()
                self.tracking = True
                # A silent feed sends no more pushes: the timer decides then.
                self._grace_call = clock.callLater(self.grace, self._grace_over)
            elif clock.seconds() - self._over_since >= self.grace:
                # Maybe inside Fanout.publish's loop over the subscription
                # index: the shard's callback runs after it, at flush.
                self._disconnect(self.fanout.after_flush)
                return
            self._refused = size
            stats.dropped["disconnect"] += 1
            if self.drops is not None and event is not None:
                self._tell_drop(event)
        else:
            stats.dropped["drop"] += 1
            if self.drops is not None and event is not None:
                self._tell_drop(event)

    def _tell_drop(self, event: Event) -> None:
        """
        C{event} was dropped (a transport without catch-up: SSE): its
        L{drops} notice goes behind the frames queued before it, or replaces
        the notice queued last if no frame came since (it names more now).
        """
        drops = self.drops
        assert drops is not None
        before = drops.notice
        notice = drops.dropped(event)
        gaps = self.stats.gaps
        gaps[DROPPED] = gaps.get(DROPPED, 0) + 1
        if is_hole(event):
            # Its run counted this stream as told (odin_ws/shard/delivery/gaps.py,
            # count_told): it was not; the recovery from this notice replays and counts it.
            gaps[UNDECODABLE] -= 1
        queue = self.queue
        if queue and before is not None and queue[-2] is before:
            queue[-2] = notice
            self.room -= len(notice) - len(before)
        else:
            self.push_control(notice)

    def _conflate(self, frame: bytes, channel: str, size: int) -> bool:
        """
        Keep only the newest waiting frame of C{channel}: older ones become
        empty placeholders (so the channel -> positions index stays valid),
        the newest is replaced in place by C{frame} if that fits. False if
        C{frame} did not fit.
        """
        index = self._index
        if index is None:
            index = self._index = {}
            self.tracking = True
        queue = self.queue
        self._explode(self._indexed)
        for i in range(self._indexed, len(queue), 2):   # index what came since last time
            index.setdefault(queue[i + 1], []).append(i)
        self._indexed = len(queue)
        positions = index.get(channel)
        if not positions:
            return False
        last = positions[-1]
        freed = 0
        for i in positions[:-1]:
            freed += len(queue[i])
            queue[i] = b""
        count = len(positions) - 1
        self._tombs += count
        index[channel] = [last]
        old = len(queue[last])
        fits = size <= self.room + freed + old
        if fits:
            queue[last] = frame
            freed += old - size
            count += 1
        self.room += freed
        self.stats.conflated += count
        if count:
            skipped = self._skipped
            if skipped is None:
                skipped = self._skipped = {}
            skipped[channel] = skipped.get(channel, 0) + count
        return fits

    def _explode(self, start: int) -> None:
        """Split the Chunk entries from queue position C{start} on into their frames."""
        queue = self.queue
        tags = queue[start + 1::2]
        if all(tag.__class__ is str for tag in tags):
            return
        rest: list[Any] = []
        for frame, tag in zip(queue[start::2], tags):
            if tag.__class__ is str:
                rest += (frame, tag)
            else:
                for part, channel, _ in tag.parts:
                    rest += (part, channel)
        queue[start:] = rest

    def _tell_skipped(self) -> None:
        """Conflation skipped events: say so, ahead of the frames that replaced them."""
        skipped, self._skipped = self._skipped, None
        assert skipped is not None
        self.queue[0:0] = (conflated_notice(skipped), "")
        self._tombs += 1    # not an event: not counted as one delivered
        self.stats.gaps[CONFLATED] = self.stats.gaps.get(CONFLATED, 0) + len(skipped)

    def push_parts(self, chunk: Chunk) -> None:
        """A Chunk that does not fit as a whole: its frames one by one, each under the policy."""
        events = chunk.events
        for i, (frame, channel, event_type) in enumerate(chunk.parts):
            size = len(frame)
            if size > self.room:
                self.overflow(frame, channel, event_type, size, events[i] if events else None)
            else:
                self._accept(frame, channel, size)
