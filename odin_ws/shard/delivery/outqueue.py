"""
The queue and write path of one connection's outbound side
(L{odin_ws.shard.delivery.outbox.Outbox} is the whole of it: this part, the
catch-up from history of L{odin_ws.shard.delivery.catchup}, and the
slow-client policies): L{OutboxCore} queues the event frames
L{odin_ws.shard.delivery.fanout.Fanout} gives it, writes them in one buffer
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
from odin_ws.shard.delivery.frames import frame_count
from odin_ws.shard.delivery.writestats import WriteStats

if TYPE_CHECKING:
    from odin_ws.common.events import Event
    from odin_ws.common.settings import OutboundSettings
    from odin_ws.shard.delivery.behind import Backlog, Behind
    from odin_ws.shard.delivery.gaps import DropTeller


class Flusher(Protocol):
    """
    What an Outbox needs of the fan-out that fills and flushes it
    (L{odin_ws.shard.delivery.fanout.Fanout}): its reactor and counters,
    to be flushed at the end of the turn (L{mark}), the runs kept for the C
    send loop out of the way of a frame queued directly (L{settle}), a call
    after the next flush (L{after_flush}).
    """

    @property
    def reactor(self) -> Any: ...

    @property
    def stats(self) -> WriteStats: ...

    @property
    def writes(self) -> Collection[int] | None:
        """The reactor's descriptors registered for writing (None: not known)."""

    def mark(self, box: OutboxCore) -> None: ...

    def settle(self) -> None:
        """Send (or queue) the runs kept for the C send loop now."""

    def after_flush(self, f: Callable[[], None]) -> None: ...


_OPEN = WebSocketProtocol.STATE_OPEN
# A closed Outbox has no room at all, so every push takes the slow path,
# which ignores it: the hot loop needs no separate "closed" test.
_CLOSED_ROOM = -(1 << 62)


class OutboxHolder:
    """
    Mix into an Autobahn protocol (before it in the bases) that holds an
    L{Outbox}: the Outbox closes the moment the protocol leaves
    C{STATE_OPEN} (a close frame went out or came in, or the connection
    dropped), so no data frame can follow a close frame, and the flush loop
    need not read the protocol's state for every connection. Autobahn sets
    C{self.state} by plain assignment, which this property intercepts.
    """

    outbox: OutboxCore | None = None
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
class OutboxCore:
    """
    The queue and write path of an L{odin_ws.shard.delivery.outbox.Outbox}
    (which adds catch-up and the slow-client policies: the hooks below).

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
        self.drops: DropTeller | None = None
        transport.registerProducer(self, True)

    def reconfigure(self, outbound: OutboundSettings) -> None:
        """Take a reloaded C{outbound.max_buffer_bytes} and C{outbound.disconnect_grace}."""
        self.limit = outbound.max_buffer_bytes
        self.grace = outbound.disconnect_grace

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
        Queue a reply to the client's own request (ack, error, pong) or a
        notice (a gap) behind the frames waiting here, and behind the runs
        the fan-out keeps for the C send loop (L{Flusher.settle}: sent or
        queued first), so it never overtakes them. Never dropped or
        conflated: a reply is small and the client waits for it.
        """
        if self.closed:
            return
        self.fanout.settle()
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

    # -- hooks of the parts above this one (catch-up, policies)

    def overflow(self, frame: bytes, channel: str, event_type: str, size: int,
                 event: Event | None = None) -> None:
        """A push that does not fit (the slow-client policies)."""
        raise NotImplementedError

    def push_parts(self, chunk: Any) -> None:
        """A Chunk that does not fit as a whole (the slow-client policies)."""
        raise NotImplementedError

    def _tell_skipped(self) -> None:
        """Conflation skipped events: tell them, ahead of the queue."""
        raise NotImplementedError

    def _catch_up_soon(self) -> None:
        """Behind: one slice of catch-up in a later turn."""
        raise NotImplementedError

    def _catch_up(self) -> None:
        """Behind: one slice of catch-up now."""
        raise NotImplementedError
