"""
The outbound side of one WebSocket connection: L{Outbox} queues the event
frames L{odin_ws.shard.delivery.fanout.Fanout} gives it, writes them in one buffer
per flush, and bounds what a slow client makes it hold. Twisted internals
are reached through L{odin_ws.common.twisted_internals} only.

Why a direct C{socket.send}: C{transport.write} buffers, arms the writer
(C{epoll_ctl}), and the reactor's C{doWrite} sends an iteration later and
disarms it (C{epoll_ctl} again), inside logging and context wrappers. When
Twisted holds nothing for the connection, sending now is what C{doWrite}
would do, minus that; order is kept since we never send past held bytes.
What the kernel refuses goes to C{transport.write}: Twisted finishes it and
notices a lost connection its usual way. Non-socket transports (TLS, test
transports) always get C{transport.write}.

Why a producer: Twisted's buffer is unbounded and opaque (bytes in it can no
longer be dropped or replaced). Each Outbox is a streaming producer on its
transport: Twisted pauses it past its 64 KiB high-water mark and resumes it
when drained. On socket transports the Outbox goes further: if Twisted
still holds bytes when a flush comes, the client is behind, so the Outbox
pauses itself and has the transport resume it once drained. Twisted then
holds at most what the kernel refused of one write; the rest waits here as
frames, where the slow-client policy bounds them (C{limit} counts Twisted's
held bytes too), drops them, keeps the latest per channel, or closes the
connection.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, Any, Protocol

from autobahn.websocket.protocol import WebSocketProtocol
from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

from odin_ws.common.twisted_internals import (
    HOLDING,
    SENDABLE,
    has_write_buffer,
    held,
    plain_socket,
    producer_of,
    resume_when_drained,
    served_by,
    write_state,
)
from odin_ws.shard.delivery.catchup import (
    CONFLATED,
    DROPPED,
    STALE,
    Backlog,
    Behind,
    conflated_notice,
    gap_notice,
)
from odin_ws.shard.delivery.frames import Chunk, frame_count
from odin_ws.shard.delivery.writestats import WriteStats
from odin_ws.shard.history.store import TOO_OLD

if TYPE_CHECKING:
    from odin_ws.common.events import Event
    from odin_ws.common.settings import OutboundSettings
    from odin_ws.shard.delivery.ssefeed import DropNotices


class Flusher(Protocol):
    """
    What an Outbox needs of the fan-out that fills and flushes it
    (L{odin_ws.shard.delivery.fanout.Fanout}): its reactor and counters,
    to be flushed at the end of the turn (L{mark}), a call after the next
    flush (L{after_flush}).
    """

    @property
    def reactor(self) -> Any: ...

    @property
    def stats(self) -> WriteStats: ...

    @property
    def writes(self) -> Collection[int] | None:
        """The reactor's descriptors registered for writing (None: not known)."""

    def mark(self, box: Outbox) -> None: ...

    def after_flush(self, f: Callable[[], None]) -> None: ...

_OPEN = WebSocketProtocol.STATE_OPEN
# A closed Outbox has no room at all, so every push takes the slow path,
# which ignores it: the hot loop needs no separate "closed" test.
_CLOSED_ROOM = -(1 << 62)
# Nor has one that is behind (room and cap start here; cap - room is still
# what waits in the queue): every push takes the slow path, which notes it.
_BEHIND_ROOM = -(1 << 61)


class OutboxHolder:
    """
    Mix into an Autobahn protocol (before it in the bases) that holds an
    L{Outbox}: the Outbox closes the moment the protocol leaves
    C{STATE_OPEN} (a close frame went out or came in, or the connection
    dropped), so no data frame can follow a close frame, and the flush loop
    need not read the protocol's state for every connection. Autobahn sets
    C{self.state} by plain assignment, which this property intercepts.
    """

    outbox: Outbox | None = None
    _ws_state = None

    @property
    def state(self) -> Any:
        return self._ws_state

    @state.setter
    def state(self, value: Any) -> None:
        self._ws_state = value
        if value != _OPEN:
            box = self.outbox
            if box is not None:
                box.close()


@implementer(IPushProducer)
class Outbox:
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

    The Outbox owns all its state. L{Fanout}'s per-connection loops inline
    L{push} and L{flush} and so use these public attributes directly (a
    method call per connection costs measurable time there):

      - C{queue}, C{room}: a push appends C{frame, tag} to C{queue} and
        subtracts its size from C{room} when it fits; else it calls
        L{overflow} or L{push_parts}; C{variant}: which of an event's
        frames (plain, compressed for a window size) it takes;
      - C{inline}, C{sock}, C{fdno}, C{paused}, C{closed}, C{tracking}:
        read to decide whether the flush may send the one waiting entry
        itself (C{inline}: a plain TCP connection of the Fanout's reactor
        and an L{OutboxHolder} protocol; C{tracking}: policy state is kept,
        which only L{flush} handles), then C{room = cap}, and after a
        whole send C{room = cap = limit}, as L{flush} does; otherwise
        it calls L{flush} or L{write_rest}.

    The C send loop (odin_ws/shard/delivery/_sendrun.c) makes the same test
    on the same attributes: a state in which the fan-out must not send to
    the connection directly (a client behind, being caught up) must show in
    one of them (C{tracking}, C{paused}, frames in C{queue}).
    """

    __slots__ = ("protocol", "transport", "fanout", "stats", "policy_for", "limit", "grace",
                 "on_slow_disconnect", "queue", "room", "cap", "paused", "closed", "inline",
                 "sock", "fdno", "tracking", "_tombs", "_fd", "_index", "_indexed",
                 "_over_since", "_refused", "_grace_call", "backlog", "behind", "_catch_call", "_skipped",
                 "variant", "drops")

    def __init__(self, protocol: Any, fanout: Flusher, policy_for: Callable[[str], str],
                 limit: int, grace: float, on_slow_disconnect: Callable[[], None],
                 backlog: Backlog | None = None):
        self.protocol = protocol
        self.transport = transport = protocol.transport
        self.fanout = fanout
        self.stats = fanout.stats
        self.policy_for = policy_for
        self.limit = limit
        self.grace = grace
        self.on_slow_disconnect = on_slow_disconnect
        # frame, channel, frame, channel, ...: one list, so the hot loop
        # does one in-place extend per frame and the flush one slice + join.
        self.queue: list[Any] = []
        # Bytes that may still be queued: cap - queued, where cap is the
        # limit minus Twisted's held bytes at the last look. One counter
        # instead of two keeps the per-connection loop to one store.
        self.room = self.cap = limit
        self.paused = False
        self.closed = False
        self._tombs = 0                 # conflated-away frames left as b"" in the queue
        # Twisted's buffer is a FileDescriptor's; a socket to send on
        # directly only a plain TCP connection's.
        self._fd = has_write_buffer(transport)
        self.sock = plain_socket(transport)
        # Fanout.flush's inline path needs more: an OutboxHolder protocol (its
        # state is not read there) and a reactor whose set of fds registered
        # for writing tells whether Twisted holds bytes for the connection.
        self.inline = (self.sock is not None and isinstance(protocol, OutboxHolder)
                       and served_by(transport, fanout.reactor)
                       and fanout.writes is not None)
        if self.inline:
            protocol.outbox = self
            self.fdno = transport.fileno()
        else:
            self.fdno = -1
        self._index: dict[str, list[int]] | None = None   # channel -> queue positions
        self._indexed = 0
        self._over_since: float | None = None   # disconnect policy: over the limit since
        self._refused = 0                       # size of the last frame that did not fit
        self._grace_call = None
        self.tracking = False           # _index, _over_since or behind is set
        #: Where catch-up reads (None: frames past the limit are dropped).
        self.backlog = backlog
        #: Per stream, where this connection fell behind (None: it is live).
        self.behind: Behind | None = None
        self._catch_call: Any = None
        #: Frames conflation replaced since the last write, per channel (told then).
        self._skipped: dict[str, int] | None = None
        #: Which event frames it gets (odin_ws/shard/delivery/deflate.py): 0,
        #: plain, until its connection says it negotiated compression.
        self.variant = 0
        #: Tells the client of events dropped past the limit (set by a
        #: transport without catch-up: an SSE stream; None: none is dropped
        #: silently, the Outbox falls behind instead).
        self.drops: DropNotices | None = None
        transport.registerProducer(self, True)

    def reconfigure(self, outbound: OutboundSettings) -> None:
        """Take a reloaded C{outbound.max_buffer_bytes} and C{outbound.disconnect_grace}."""
        self.limit = outbound.max_buffer_bytes
        self.grace = outbound.disconnect_grace

    # -- queueing

    def push(self, frame: bytes, channel: str, event_type: str,
             event: Event | None = None) -> None:
        """Queue C{frame} (of C{channel}, C{event_type}, C{event}) for this reactor turn."""
        size = len(frame)
        if size > self.room:
            self.overflow(frame, channel, event_type, size, event)
        else:
            self._accept(frame, channel, size)

    def _accept(self, frame: bytes, channel: str, size: int) -> None:
        self.room -= size
        queue = self.queue
        if not queue:
            self.fanout.mark(self)
        queue += (frame, channel)

    def push_control(self, frame: bytes) -> None:
        """
        Queue a reply to the client's own request (ack, error, pong) behind
        the frames waiting here, so it never overtakes them. Never dropped or
        conflated: a reply is small and the client waits for it.
        """
        if self.closed:
            return
        self.room -= len(frame)
        queue = self.queue
        if not queue:
            self.fanout.mark(self)
        queue += (frame, "")

    def queued(self) -> int:
        """Bytes of the frames waiting in this Outbox."""
        return 0 if self.closed else self.cap - self.room

    def buffered(self) -> int:
        """Bytes waiting for this connection: Twisted's held bytes plus the queue."""
        return held(self.transport) + self.queued()

    def _settle(self) -> None:
        """Re-read Twisted's held bytes; track the high-water mark and the over state."""
        queued = self.cap - self.room
        now_held = held(self.transport)
        if self.behind is None:
            self.cap = self.limit - now_held
            self.room = self.cap - queued
        waiting = now_held + queued
        stats = self.stats
        if waiting > stats.high_water:
            stats.high_water = waiting
        if self._over_since is not None and self.room >= self._refused:
            self._calm()

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
        self.stats.gaps[DROPPED] = self.stats.gaps.get(DROPPED, 0) + 1
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

    def push_parts(self, chunk: Chunk) -> None:
        """A Chunk that does not fit as a whole: its frames one by one, each under the policy."""
        events = chunk.events
        for i, (frame, channel, event_type) in enumerate(chunk.parts):
            size = len(frame)
            if size > self.room:
                self.overflow(frame, channel, event_type, size, events[i] if events else None)
            else:
                self._accept(frame, channel, size)

    # -- writing

    def flush(self) -> None:
        """Write everything queued in one buffer, unless paused, closed or held back."""
        queue = self.queue
        if not queue or self.paused or self.closed:
            return
        if self.protocol.state != _OPEN:
            # A close frame has gone out (or came in): no data frame may follow.
            self._discard()
            return
        t = self.transport
        direct = False
        if self._fd:
            state = write_state(t)
            if state == HOLDING:
                if producer_of(t) is self and not t.disconnecting:
                    # The client has not taken the last write yet: keep the
                    # frames here, and have doWrite resume us once drained.
                    self.paused = True
                    resume_when_drained(t)
                    self._settle()
                    return
            else:
                direct = state == SENDABLE
        if self._skipped is not None:
            self._tell_skipped()
        if len(queue) == 2:
            buf, tag = queue
            frames = 1 if tag.__class__ is str else tag.count
        else:
            buf = b"".join(queue[::2])
            frames = frame_count(queue[1::2]) - self._tombs
        queue.clear()
        self.room = self.cap
        if self._index is not None:
            self._forget()
        size = len(buf)
        stats = self.stats
        stats.delivered += frames
        stats.bytes_out += size
        stats.writes += 1
        if direct:
            try:
                # A SENDABLE state is only read on a plain socket (_fd).
                sent = self.sock.send(buf)  # type: ignore[union-attr]
            except OSError:
                # EAGAIN, ECONNRESET, EPIPE, ...: what the kernel did not
                # take goes to Twisted, whose own write finds a loss and
                # closes the connection the usual way.
                sent = 0
            if sent == size:
                stats.direct += 1
                if self.behind is not None:
                    self._catch_up_soon()
                    return
                self.room = self.cap = self.limit
                if self._over_since is not None:
                    self._settle()
                return
            self.write_rest(buf, sent)
            return
        stats.buffered += 1
        t.write(buf)
        self._settle()
        if self.behind is not None:
            self._catch_up_soon()

    def _tell_skipped(self) -> None:
        """Conflation skipped events: say so, ahead of the frames that replaced them."""
        skipped, self._skipped = self._skipped, None
        assert skipped is not None
        self.queue[0:0] = (conflated_notice(skipped), "")
        self._tombs += 1    # not an event: not counted as one delivered
        self.stats.gaps[CONFLATED] = self.stats.gaps.get(CONFLATED, 0) + len(skipped)

    def write_rest(self, buf: bytes, sent: int) -> None:
        """A direct send took C{sent} bytes of C{buf}: Twisted takes the rest."""
        stats = self.stats
        if sent > 0:
            stats.partial += 1
            buf = buf[sent:]
        else:
            stats.buffered += 1
            stats.fallbacks += 1
        self.transport.write(buf)
        self._settle()
        if self.behind is not None:
            self._catch_up_soon()

    def _discard(self) -> None:
        self.queue.clear()
        self.room = self.cap
        self._forget()

    def _forget(self) -> None:
        """Drop the channel index (and placeholders count) of an emptied queue."""
        self._tombs = 0
        self._index = None
        self._indexed = 0
        self.tracking = self._over_since is not None or self.behind is not None

    # -- behind: catch-up from history (odin_ws/shard/delivery/catchup.py)

    def fall_behind(self, event: Event, disconnect: bool = False) -> None:
        """
        C{event} does not fit: take no more frames, note where each stream
        stopped, catch up from history once the socket drains. Under the
        disconnect policy (C{disconnect}) the grace starts too.
        """
        behind = self.behind = Behind(disconnect)
        behind.note(event)
        self._behind()
        if disconnect:
            clock = self.fanout.reactor
            self._over_since = clock.seconds()
            self._refused = 0
            self._grace_call = clock.callLater(self.grace, self._grace_over)

    def can_stream(self, patterns: set[tuple[str, str]]) -> bool:
        """
        Whether a recovery for C{patterns} may be streamed (L{recover_from}):
        catch-up is possible, and the connection holds no other pattern
        (catch-up reads for every pattern held; a held one outside
        C{patterns} would get its events again). It may be behind already.
        """
        backlog = self.backlog
        return (backlog is not None and not self.closed
                and set(backlog.patterns_of(self)) <= patterns)

    def recover_from(self, since: dict[tuple[str, int], tuple[str, int]]) -> None:
        """
        Stream a recovery too large for the buffer (or asked while behind):
        behind from C{since} (C{(topic, partition) -> (epoch, offset)}),
        caught up from history in slices as the socket drains (only after
        L{can_stream}). Already behind: C{since} replaces the positions of
        its streams (the client says what it holds of every pattern the
        connection has), the others' stay.
        """
        behind = self.behind
        if behind is not None:
            behind.streams.update(since)
            behind.replay = True
            self._catch_up_soon()
            return
        behind = self.behind = Behind(replay=True)
        behind.streams.update(since)
        self._behind()

    def _behind(self) -> None:
        queued = self.cap - self.room
        self.cap = _BEHIND_ROOM
        self.room = _BEHIND_ROOM - queued
        self.tracking = True
        stats = self.stats
        stats.fell_behind += 1
        stats.behind_now += 1
        # Catch-up starts in a later turn and waits for the drain itself:
        # nothing else may start it. Nothing may be queued (the frames before
        # went out directly, the kernel or Twisted holding what did not fit),
        # so no flush of ours follows; and Twisted resumes a streaming
        # producer only if it was paused.
        self._catch_up_soon()

    def _catch_up_soon(self) -> None:
        """One slice in a later reactor turn (one per turn: others get theirs)."""
        if self._catch_call is None and not self.closed:
            self._catch_call = self.fanout.reactor.callLater(0, self._catch_up)

    def _catch_up(self) -> None:
        """
        Queue one slice of what this connection missed (as much as its
        buffer has room for) and write it; live again once a slice reached
        the newest event of every stream.
        """
        self._catch_call = None
        behind = self.behind
        if behind is None or self.closed or self.paused:
            return
        t = self.transport
        if self._fd and write_state(t) == HOLDING and producer_of(t) is self:
            self.paused = True
            resume_when_drained(t)
            return
        backlog = self.backlog
        assert backlog is not None, "behind only with a backlog"
        queued = self.cap - self.room
        part = behind.slice(backlog, self, self.limit - held(t) - queued)
        stats = self.stats
        if part.gaps:
            if behind.disconnect:
                self._disconnect(lambda f: f())
                return
            if any(reason == TOO_OLD for reason in part.gaps):
                stats.fell_out += 1
            for reason, streams in part.gaps.items():
                stats.gaps[reason] = stats.gaps.get(reason, 0) + len(streams)
                self.push_control(gap_notice(reason, streams))
        queue = self.queue
        for frame, channel in part.frames:
            self.room -= len(frame)
            queue += (frame, channel)
        stats.caught_up += part.events
        if part.stale:
            stats.gaps[STALE] = stats.gaps.get(STALE, 0) + part.stale
        if part.done:
            self._go_live()
        if queue:
            self.flush()
        elif self.behind is not None:
            self._catch_up_soon()

    def _go_live(self) -> None:
        self.behind = None
        self.stats.behind_now -= 1
        queued = self.cap - self.room
        self.cap = self.limit - held(self.transport)
        self.room = self.cap - queued
        self._calm()

    # -- IPushProducer (called by Twisted)

    def pauseProducing(self) -> None:
        """Twisted holds more than its high-water mark: keep frames here."""
        self.paused = True

    def resumeProducing(self) -> None:
        """Twisted's buffer has drained: write what waits."""
        self.paused = False
        if self.closed:
            return
        if self.transport.disconnecting:
            # Twisted finishes a loseConnection only once a paused producer
            # is gone; no frame is due on a closing connection anyway.
            self.close()
            return
        if self.queue:
            self.flush()
        else:
            self._settle()
            if self.behind is not None:
                self._catch_up()

    def stopProducing(self) -> None:
        """The connection is gone."""
        self.close()

    # -- slow disconnect and close

    def _calm(self) -> None:
        self._over_since = None
        self.tracking = self._index is not None or self.behind is not None
        self._refused = 0
        call, self._grace_call = self._grace_call, None
        if call is not None and call.active():
            call.cancel()

    def _grace_over(self) -> None:
        self._grace_call = None
        if self.closed or self._over_since is None:
            return
        self._settle()
        if self._over_since is not None:
            self._disconnect(lambda f: f())

    def _disconnect(self, run: Callable[[Callable[[], None]], None]) -> None:
        self.stats.slow_disconnects += 1
        self.close()
        run(self.on_slow_disconnect)

    def close(self) -> None:
        """Drop waiting frames, unregister from the transport, never write again."""
        if self.closed:
            return
        self.closed = True
        self._discard()
        self._calm()
        if self.behind is not None:
            self.behind = None
            self.stats.behind_now -= 1
        call, self._catch_call = self._catch_call, None
        if call is not None and call.active():
            call.cancel()
        self.room = _CLOSED_ROOM
        transport = self.transport
        if producer_of(transport) is self:
            transport.unregisterProducer()
