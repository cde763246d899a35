"""
The fan-out write path: one event frame to many WebSocket connections. The
one module touching Twisted's and Autobahn's write internals; guarded by
C{tests/shard/test_writepath.py}.

Why frame ourselves: the server accepts no compression, so an event's frame
is the same bytes for every client; L{text_frame} builds it once. Autobahn's
C{sendMessage} would frame it per client and format a debug line per call.

Why one write per connection per batch: L{Fanout.publish} only appends the
shared frame to each subscriber's L{Outbox}; L{Fanout.flush} (after each
Kafka batch, else at the end of the reactor turn) joins what a connection
got into one buffer, so per-write costs are paid per connection, not event.

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
pauses itself and sets the transport's C{producerPaused}, which makes
C{doWrite} resume it once drained. Twisted then holds at most what the
kernel refused of one write; the rest waits here as frames, where the
slow-client policy bounds them (C{limit} counts Twisted's held bytes too),
drops them, keeps the latest per channel, or closes the connection.
"""

from __future__ import annotations

import socket
import struct
from typing import Any, Callable, Iterable

from autobahn.websocket.protocol import WebSocketProtocol
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from twisted.internet import abstract, tcp
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from zope.interface import implementer

log = Logger()

POLICIES = ("drop", "conflate", "disconnect")

_OPEN = WebSocketProtocol.STATE_OPEN
# A closed Outbox has no room at all, so every push takes the slow path,
# which ignores it: the hot loop needs no separate "closed" test.
_CLOSED_ROOM = -(1 << 62)
_TCP_NOTSENT_LOWAT = getattr(socket, "TCP_NOTSENT_LOWAT", 25)   # Linux
_LEN16 = struct.Struct("!BBH").pack
_LEN64 = struct.Struct("!BBQ").pack


def text_frame(payload: bytes) -> bytes:
    """An unmasked, final, text (opcode 1) WebSocket frame carrying C{payload}."""
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 0x10000:
        return _LEN16(0x81, 126, n) + payload
    return _LEN64(0x81, 127, n) + payload


class Chunk:
    """
    The tag of a queue entry holding several frames joined once for many
    connections (L{Fanout.publish_run}): the frames it carries, with their
    channels and event types, for the slow-client policies and the counters.
    """

    __slots__ = ("parts", "count")

    def __init__(self, parts: list[tuple[bytes, str, str]]):
        self.parts = parts
        self.count = len(parts)

    def __repr__(self) -> str:
        return f"<Chunk of {self.count} frames>"


def _frames(tags: list) -> int:
    """Frames in queue entries with these tags (a channel: one; a Chunk: its count)."""
    return sum(1 if tag.__class__ is str else tag.count for tag in tags)


class WriteStats:
    """
    Counters of one process's write path, as plain integers: the hot loop
    bumps them, L{WriteStatsCollector} reads them at scrape time.
    """

    def __init__(self) -> None:
        self.delivered = 0         # frames handed to the kernel or to Twisted
        self.bytes_out = 0         # their bytes
        self.writes = 0            # buffers written (one per connection per flush)
        self.direct = 0            # ... the kernel took all of it at once
        self.partial = 0           # ... the kernel took part, the rest went to Twisted
        self.buffered = 0          # ... all of it went to transport.write
        self.fallbacks = 0         # ... of those, a direct send was tried and refused
        self.dropped = dict.fromkeys(POLICIES, 0)  # frames dropped, by policy
        self.conflated = 0         # waiting frames replaced by a newer one of their channel
        self.slow_disconnects = 0  # connections closed under the disconnect policy
        self.high_water = 0        # most bytes one connection had waiting (Twisted + queue)


class WriteStatsCollector:
    """A C{prometheus_client} collector exposing a L{WriteStats}."""

    def __init__(self, stats: WriteStats):
        self.stats = stats

    def collect(self):
        s = self.stats
        for name, doc, value in (
                ("events_delivered", "Event frames written to clients.", s.delivered),
                ("outbound_bytes", "Event bytes written to clients.", s.bytes_out),
                ("events_conflated", "Waiting event frames replaced by a newer one of "
                 "their channel.", s.conflated),
                ("slow_disconnects", "Connections closed (4008) under the disconnect "
                 "policy.", s.slow_disconnects)):
            yield CounterMetricFamily("odinws_" + name, doc, value=value)
        yield GaugeMetricFamily("odinws_outbound_buffer_high_water_bytes", "Most bytes "
                                "one connection had waiting, since start.", value=s.high_water)
        dropped = CounterMetricFamily("odinws_events_dropped", "Event frames dropped for "
                                      "slow clients, by policy.", labels=["policy"])
        for policy in POLICIES:
            dropped.add_metric([policy], s.dropped[policy])
        yield dropped
        writes = CounterMetricFamily("odinws_writes", "Buffers written to connections, by "
                                     "path: direct (socket.send took all), partial (the "
                                     "rest went to Twisted), buffered (all via Twisted).",
                                     labels=["path"])
        for path, value in (("direct", s.direct), ("partial", s.partial),
                            ("buffered", s.buffered)):
            writes.add_metric([path], value)
        yield writes


def held(transport: Any) -> int:
    """
    Bytes Twisted holds for C{transport} because the kernel has not taken
    them yet. For TLS, the (encrypted) bytes the TCP transport below holds;
    0 for transports with no such buffer (test transports).
    """
    if isinstance(transport, abstract.FileDescriptor):
        return len(transport.dataBuffer) - transport.offset + transport._tempDataLen
    inner = getattr(transport, "transport", None)   # TLSMemoryBIOProtocol and wrappers
    if inner is not None and inner is not transport:
        return held(inner)
    return 0


def _producer_of(transport: Any) -> Any:
    membrane = getattr(transport, "_producer", None)
    if membrane is not None:
        # TLSMemoryBIOProtocol wraps its producer in a _ProducerMembrane (and
        # its .producer would be the TCP transport's: the membrane).
        return getattr(membrane, "_producer", None)
    return getattr(transport, "producer", None)


def limit_unsent(transport: Any, nbytes: int) -> bool:
    """
    Let the kernel queue at most about C{nbytes} unsent bytes on the TCP
    socket under C{transport} (TCP_NOTSENT_LOWAT; 0 = leave the default).
    Without it, send buffer autotuning lets a stalled client's socket take
    up to net.ipv4.tcp_wmem's maximum (4 MiB) before a send is refused and
    the Outbox's limit and policy ever apply. Bytes in flight to a reading
    client are not limited, so throughput to distant clients is kept. False
    if the transport has no TCP socket.
    """
    if nbytes <= 0:
        return False
    try:
        sock = transport.getHandle()
        sock.setsockopt(socket.IPPROTO_TCP, _TCP_NOTSENT_LOWAT, nbytes)
    except (AttributeError, OSError):
        return False    # not TCP (tests, Unix sockets)
    return True


class OutboxHolder:
    """
    Mix into an Autobahn protocol (before it in the bases) that holds an
    L{Outbox}: the Outbox closes the moment the protocol leaves
    C{STATE_OPEN} (a close frame went out or came in, or the connection
    dropped), so no data frame can follow a close frame, and the flush loop
    need not read the protocol's state for every connection. Autobahn sets
    C{self.state} by plain assignment, which this property intercepts.
    """

    outbox: "Outbox | None" = None
    _ws_state = None

    @property
    def state(self):
        return self._ws_state

    @state.setter
    def state(self, value) -> None:
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
    past it. Per-channel order is kept under every policy:

      - drop: the new frame is discarded;
      - conflate: the channel's waiting frames give way to the new one; it
        is dropped if none of its channel waits here or it still does not fit;
      - disconnect: dropped as well, and if the connection is still over the
        limit C{grace} seconds after it first was, the Outbox closes and
        calls C{on_slow_disconnect} (once).

    Drops and conflations are counted in L{WriteStats} (frames discarded
    because the connection closes are not). A change of C{limit} takes
    effect at the next flush.
    """

    __slots__ = ("protocol", "transport", "fanout", "stats", "policy_for", "limit", "grace",
                 "on_slow_disconnect", "queue", "room", "paused", "closed", "_cap", "_tombs",
                 "_fd", "_direct", "_sock", "_fdno", "_index", "_indexed", "_over_since",
                 "_refused", "_grace_call")

    def __init__(self, protocol: Any, fanout: "Fanout", policy_for: Callable[[str], str],
                 limit: int, grace: float, on_slow_disconnect: Callable[[], None]):
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
        self.queue: list = []
        # Bytes that may still be queued: _cap - queued, where _cap is the
        # limit minus Twisted's held bytes at the last look. One counter
        # instead of two keeps the per-connection loop to one store.
        self.room = self._cap = limit
        self.paused = False
        self.closed = False
        self._tombs = 0                 # conflated-away frames left as b"" in the queue
        # Twisted's buffer attributes are FileDescriptor's; a socket to send
        # on directly only a TCP (or Unix) connection's.
        self._fd = isinstance(transport, abstract.FileDescriptor)
        # Fanout.flush's inline path needs more: an OutboxHolder protocol (its
        # state is not read there) and a reactor whose set of fds registered
        # for writing tells whether Twisted holds bytes for the connection.
        self._direct = (isinstance(transport, tcp.Connection) and not transport.TLS
                        and isinstance(protocol, OutboxHolder)
                        and transport.reactor is fanout.reactor
                        and fanout.writes is not None)
        if self._direct:
            protocol.outbox = self
            self._sock = transport.socket
            self._fdno = transport.fileno()
        else:
            self._sock = None
            self._fdno = -1
        self._index: dict[str, list[int]] | None = None   # channel -> queue positions
        self._indexed = 0
        self._over_since: float | None = None   # disconnect policy: over the limit since
        self._refused = 0                       # size of the last frame that did not fit
        self._grace_call = None
        transport.registerProducer(self, True)

    # -- queueing

    def push(self, frame: bytes, channel: str, event_type: str) -> None:
        """Queue C{frame} (of C{channel}, C{event_type}) for this reactor turn."""
        size = len(frame)
        if size > self.room:
            self._over(frame, channel, event_type, size)
        else:
            self._accept(frame, channel, size)

    def _accept(self, frame: bytes, channel: str, size: int) -> None:
        self.room -= size
        queue = self.queue
        if not queue:
            self.fanout._mark(self)
        queue += (frame, channel)

    def queued(self) -> int:
        """Bytes of the frames waiting in this Outbox."""
        return 0 if self.closed else self._cap - self.room

    def buffered(self) -> int:
        """Bytes waiting for this connection: Twisted's held bytes plus the queue."""
        return held(self.transport) + self.queued()

    def _settle(self) -> None:
        """Re-read Twisted's held bytes; track the high-water mark and the over state."""
        queued = self._cap - self.room
        now_held = held(self.transport)
        self._cap = self.limit - now_held
        self.room = self._cap - queued
        waiting = now_held + queued
        stats = self.stats
        if waiting > stats.high_water:
            stats.high_water = waiting
        if self._over_since is not None and self.room >= self._refused:
            self._calm()

    def _over(self, frame: bytes, channel: str, event_type: str, size: int) -> None:
        """The slow path: the frame does not fit in the room last computed."""
        if self.closed:
            return
        self._settle()
        if size <= self.room:
            self._accept(frame, channel, size)
            return
        policy = self.policy_for(event_type)
        stats = self.stats
        if policy == "conflate":
            if not self._conflate(frame, channel, size):
                stats.dropped["conflate"] += 1
        elif policy == "disconnect":
            clock = self.fanout.reactor
            if self._over_since is None:
                self._over_since = clock.seconds()
                # A silent feed sends no more pushes: the timer decides then.
                self._grace_call = clock.callLater(self.grace, self._grace_over)
            elif clock.seconds() - self._over_since >= self.grace:
                # Maybe inside Fanout.publish's loop over the subscription
                # index: the shard's callback runs after it, at flush.
                self._disconnect(self.fanout._defer)
                return
            self._refused = size
            stats.dropped["disconnect"] += 1
        else:
            stats.dropped["drop"] += 1

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
        return fits

    def _explode(self, start: int) -> None:
        """Split the Chunk entries from queue position C{start} on into their frames."""
        queue = self.queue
        tags = queue[start + 1::2]
        if all(tag.__class__ is str for tag in tags):
            return
        rest = []
        for frame, tag in zip(queue[start::2], tags):
            if tag.__class__ is str:
                rest += (frame, tag)
            else:
                for part, channel, _ in tag.parts:
                    rest += (part, channel)
        queue[start:] = rest

    def _push_parts(self, chunk: Chunk) -> None:
        """A Chunk that does not fit as a whole: its frames one by one, each under the policy."""
        for frame, channel, event_type in chunk.parts:
            size = len(frame)
            if size > self.room:
                self._over(frame, channel, event_type, size)
            else:
                self._accept(frame, channel, size)

    # -- writing

    def _flush(self) -> None:
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
            if t._tempDataLen or len(t.dataBuffer) != t.offset:
                if t.producer is self and not t.disconnecting:
                    # The client has not taken the last write yet: keep the
                    # frames here, and have doWrite resume us once drained.
                    self.paused = t.producerPaused = True
                    self._settle()
                    return
            elif isinstance(t, tcp.Connection):
                direct = (t.connected and not t.disconnecting and not t._aborting
                          and not t.TLS)
        if len(queue) == 2:
            buf, tag = queue
            frames = 1 if tag.__class__ is str else tag.count
        else:
            buf = b"".join(queue[::2])
            frames = _frames(queue[1::2]) - self._tombs
        queue.clear()
        self.room = self._cap
        if self._index is not None:
            self._forget()
        size = len(buf)
        stats = self.stats
        stats.delivered += frames
        stats.bytes_out += size
        stats.writes += 1
        if direct:
            try:
                sent = t.socket.send(buf)
            except OSError:
                # EAGAIN, ECONNRESET, EPIPE, ...: what the kernel did not
                # take goes to Twisted, whose own write finds a loss and
                # closes the connection the usual way.
                sent = 0
            if sent == size:
                stats.direct += 1
                self.room = self._cap = self.limit
                if self._over_since is not None:
                    self._settle()
                return
            self._rest(buf, sent)
            return
        stats.buffered += 1
        t.write(buf)
        self._settle()

    def _rest(self, buf: bytes, sent: int) -> None:
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

    def _discard(self) -> None:
        self.queue.clear()
        self.room = self._cap
        self._forget()

    def _forget(self) -> None:
        """Drop the channel index (and placeholders count) of an emptied queue."""
        self._tombs = 0
        self._index = None
        self._indexed = 0

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
            self._flush()
        else:
            self._settle()

    def stopProducing(self) -> None:
        """The connection is gone."""
        self.close()

    # -- slow disconnect and close

    def _calm(self) -> None:
        self._over_since = None
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
        self.room = _CLOSED_ROOM
        transport = self.transport
        if _producer_of(transport) is self:
            transport.unregisterProducer()


class Fanout:
    """
    Pushes prebuilt frames to many Outboxes and flushes the ones that got
    frames: on L{flush}, or at the end of the reactor turn if nobody did.
    """

    def __init__(self, reactor: Any, stats: WriteStats):
        self.reactor = reactor
        self.stats = stats
        # The epoll/poll/select reactors' set of file descriptors registered
        # for writing: Twisted holds bytes for a connection (or is closing
        # it) exactly while its fd is in there. None for other reactors.
        writes = getattr(reactor, "_writes", None)
        self.writes: set[int] | None = writes if isinstance(writes, set) else None
        self._dirty: list[Outbox] = []
        self._later: list[Callable[[], None]] = []
        self._call = None

    def publish(self, frame: bytes, channel: str, event_type: str,
                outboxes: Iterable[Outbox]) -> None:
        """Queue one frame (of C{channel}, C{event_type}) on every outbox."""
        size = len(frame)
        self._spread((frame, channel), size, outboxes,
                     lambda box: box._over(frame, channel, event_type, size))

    def publish_run(self, items: list[tuple[bytes, str, str]], outboxes: Iterable[Outbox]) -> None:
        """
        Queue several frames, each C{(frame, channel, event_type)}, in order on
        every outbox: consecutive events that reach the same subscribers. The
        frames are joined once for all of them, so each outbox takes one
        entry; an outbox without room for the whole takes them one by one
        under its policy.
        """
        if len(items) == 1:
            self.publish(*items[0], outboxes)
            return
        chunk = b"".join([item[0] for item in items])
        tag = Chunk(items)
        self._spread((chunk, tag), len(chunk), outboxes, lambda box: box._push_parts(tag))

    def _spread(self, pair: tuple, size: int, outboxes: Iterable[Outbox],
                over: Callable[[Outbox], None]) -> None:
        """
        Append the queue entry C{pair} (C{size} bytes) to every outbox with
        room for it; C{over(box)} for the others. Outbox.push inlined: this
        loop runs once per subscriber per event or run.
        """
        dirty = self._dirty
        mark = dirty.append
        for box in outboxes:
            room = box.room - size
            if room < 0:
                over(box)
                continue
            box.room = room
            queue = box.queue
            if not queue:
                mark(box)
            queue += pair
        if dirty:
            self._soon()

    def flush(self) -> None:
        """Write every outbox that got frames since the last flush, now."""
        call, self._call = self._call, None
        if call is not None and call.active():
            call.cancel()
        dirty, self._dirty = self._dirty, []
        frames = size = sent_whole = 0
        writes = self.writes
        for box in dirty:
            # Outbox._flush inlined for the common case: one entry waiting on a
            # TCP connection (of an open OutboxHolder protocol: else closed)
            # for which Twisted holds nothing (its fd is not waiting to be
            # writable), no policy state; the kernel takes it all. The rest
            # goes through Outbox._flush.
            queue = box.queue
            if (len(queue) == 2 and box._direct and not (box.paused or box.closed)
                    and box._index is None and box._over_since is None
                    and box._fdno not in writes):
                buf, tag = queue
                queue.clear()
                box.room = box._cap
                count = 1 if tag.__class__ is str else tag.count
                try:
                    sent = box._sock.send(buf)
                except OSError:
                    sent = 0    # as in Outbox._flush
                if sent == len(buf):
                    box.room = box._cap = box.limit
                    frames += count
                    size += sent
                    sent_whole += 1
                    continue
                stats = self.stats
                stats.delivered += count
                stats.bytes_out += len(buf)
                stats.writes += 1
                try:
                    box._rest(buf, sent)
                except Exception:
                    log.failure("writing to {outbox}", outbox=box)
                continue
            try:
                box._flush()
            except Exception:
                # One broken connection must not starve the others.
                log.failure("writing to {outbox}", outbox=box)
        stats = self.stats
        stats.delivered += frames
        stats.bytes_out += size
        stats.writes += sent_whole
        stats.direct += sent_whole
        later, self._later = self._later, []
        for f in later:
            try:
                f()
            except Exception:
                log.failure("slow-client disconnect {f}", f=f)

    def _turn_end(self) -> None:
        self._call = None
        self.flush()

    def _mark(self, box: Outbox) -> None:
        self._dirty.append(box)
        self._soon()

    def _defer(self, f: Callable[[], None]) -> None:
        """Run C{f} at the next flush, after the outboxes were written."""
        self._later.append(f)
        self._soon()

    def _soon(self) -> None:
        if self._call is None:
            self._call = self.reactor.callLater(0, self._turn_end)
