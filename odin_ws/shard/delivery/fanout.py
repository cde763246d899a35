"""
The fan-out: one event frame to many WebSocket connections (its counters
are L{odin_ws.shard.delivery.writestats}). Twisted internals are reached through
L{odin_ws.common.twisted_internals} only.

Why one write per connection per batch: L{Fanout.publish} only appends the
shared frame to each subscriber's L{Outbox}; L{Fanout.flush} (after each
Kafka batch, else at the end of the reactor turn) joins what a connection
got into one buffer, so per-write costs are paid per connection, not event.

With a flush window (C{outbound.flush_delay} > 0) L{Fanout.flush} only
makes sure one timer of the shard runs: what the Outboxes collect until it
fires leaves in one write per connection, so under load several events
share a send() (each send costs ~8 us of kernel on this loopback, see
docs/performance.md). The window costs one timer per shard, nothing per
connection, and with 0 the write happens in flush() as before.

Both loops run once per subscriber and inline what an Outbox method would
do for the common case (L{Fanout._spread}: L{Outbox.push};
L{Fanout.flush}: L{Outbox.flush} of one entry on a plain TCP connection).
They read and write the Outbox's public attributes the Outbox documents for
them instead of calling it: a call per connection costs measurable time.

With the native send loop (C{outbound.native}, L{odin_ws.shard.delivery.nativesend})
and no flush window, a run is not spread at all: L{Fanout.publish_run} keeps
it (with a snapshot of its subscribers) until the write that follows in the
same call (every caller flushes right after publishing), and the C loop sends
each connection whose Outbox is empty and for which Twisted holds nothing
all its runs in one send. Only the others come back to Python: a send the
kernel took part of goes to L{Outbox.write_rest}; a connection with frames
waiting, paused, closing or not inline gets the run pushed into its Outbox
here, under its policy, before the Outboxes are written.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Collection, Iterable
from typing import Any

from twisted.logger import Logger

from odin_ws.common.events import Event
from odin_ws.common.twisted_internals import pending_writers
from odin_ws.shard.delivery.deflate import PLAIN, Deflate
from odin_ws.shard.delivery.frames import Run, frame_count
from odin_ws.shard.delivery.nativesend import SendRuns
from odin_ws.shard.delivery.outbox import Outbox
from odin_ws.shard.delivery.outqueue import OutboxCore
from odin_ws.shard.delivery.writestats import WriteStats

log = Logger()

_TCP_NOTSENT_LOWAT = getattr(socket, "TCP_NOTSENT_LOWAT", 25)   # Linux


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


class Fanout:
    """
    Pushes prebuilt frames to many Outboxes and flushes the ones that got
    frames: on L{flush}, or at the end of the reactor turn if nobody did.
    """

    def __init__(self, reactor: Any, stats: WriteStats, delay: float = 0.0,
                 native: SendRuns | None = None, deflate: Deflate | None = None):
        self.reactor = reactor
        self.stats = stats
        #: The flush window in seconds (C{outbound.flush_delay}; 0 = write in L{flush}).
        self.delay = delay
        # Twisted holds bytes for a connection (or is closing it) exactly
        # while its fd is in this set; None for reactors without one.
        self.writes: set[int] | None = pending_writers(reactor)
        #: The C send loop (None: the Python loop only).
        self.native = native
        #: The shard's compression of event frames (None: never compressed).
        self.deflate = deflate
        # Runs kept for the C loop until the next write: (buffer per
        # variant, frames, subscribers) and, for the Python path, the Run.
        self._runs: list[tuple[tuple[bytes | None, ...], int, tuple[Outbox, ...]]] = []
        self._entries: list[Run] = []
        self._dirty: list[OutboxCore] = []
        self._later: list[Callable[[], None]] = []
        self._call = None
        #: A caller that flushes before it returns is publishing (L{hold}).
        self._held = False

    def publish(self, frame: bytes, channel: str, event_type: str,
                outboxes: Iterable[Outbox], event: Event | None = None) -> None:
        """
        Queue one frame (of C{channel}, C{event_type}; of C{event} of the
        shard's history, which a slow outbox catches up from) on every outbox.
        """
        self.publish_run([(frame, channel, event_type)], outboxes,
                         [event] if event is not None else None)

    def publish_run(self, items: list[tuple[bytes, str, str]], outboxes: Iterable[Outbox],
                    events: list[Event] | None = None, compress: bool = True) -> None:
        """
        Queue several frames, each C{(frame, channel, event_type)}, in order on
        every outbox: consecutive events that reach the same subscribers. The
        frames are joined once for all of them (once per variant: plain, or
        compressed for a window size, L{odin_ws.shard.delivery.deflate}), so
        each outbox takes one entry; an outbox without room for the whole
        takes them one by one under its policy. C{events}: the history
        events the frames carry (C{events[i]} is C{items[i]}'s), where a
        slow outbox catches up from. C{compress}: False for frames meant for
        one connection (a recovery, a snapshot), which go out plain:
        compressing them would cost per connection, not per event.
        """
        run = Run(items, events, self.deflate if compress else None)
        if self.native is not None and not self.delay:
            self._keep(run, outboxes)
            return
        self._spread(run, outboxes)

    def _spread(self, run: Run, outboxes: Iterable[Outbox], variant: int = PLAIN) -> None:
        """
        Append C{run}'s queue entry of C{variant} to every outbox of that
        variant with room for it; the run's overflow for the others of that
        variant; the other variants' entries to the rest (L{_spread_variants}).
        Outbox.push inlined: this loop runs once per subscriber per run.
        """
        pair, size = run.entry(variant)
        over = run.over(variant)
        dirty = self._dirty
        mark = dirty.append
        others: list[Outbox] | None = None
        for box in outboxes:
            if box.variant != variant:
                if others is None:
                    others = []
                others.append(box)
                continue
            room = box.room - size
            if room < 0:
                over(box)
                continue
            box.room = room
            queue = box.queue
            if not queue:
                mark(box)
            queue += pair
        if others is not None:
            self._spread_variants(run, others)
        if dirty:
            self._soon()

    def _spread_variants(self, run: Run, outboxes: list[Outbox]) -> None:
        """C{run} to outboxes of compressed variants, counted per variant (if compressed)."""
        by_variant: dict[int, list[Outbox]] = {}
        for box in outboxes:
            by_variant.setdefault(box.variant, []).append(box)
        if run.deflate is None:
            for v, boxes in by_variant.items():
                self._spread(run, boxes, v)
            return
        stats = self.stats
        plain = run.entry(PLAIN)[1]
        for v, boxes in by_variant.items():
            self._spread(run, boxes, v)
            size = run.entry(v)[1]
            stats.deflate_plain += plain * len(boxes)
            stats.deflate_wire += size * len(boxes)

    def _keep(self, run: Run, outboxes: Iterable[Outbox]) -> None:
        """
        Keep a run for the C loop at the next write, with the buffers of the
        variants open connections use. Its subscribers are taken now (the
        index hands out live views): those it reaches are those it would
        have reached in the Python loop.
        """
        deflate = self.deflate
        boxes = tuple(outboxes)
        # Compressed only for the variants of this run's own recipients.
        bufs = run.bufs(deflate.used_by(outboxes if isinstance(outboxes, Collection) else boxes)
                        if deflate is not None else [])
        self._runs.append((bufs, len(run.items), boxes))
        self._entries.append(run)
        self._soon()

    def settle(self) -> None:
        """
        Send the runs kept for the C loop now, so that frames queued into
        Outboxes directly next (a delta subscriber's,
        L{odin_ws.shard.delivery.variantfeed}; every reply and notice,
        L{Outbox.push_control}) come after them.
        """
        if self._runs:
            self._send_native(self.native)  # type: ignore[arg-type]  # runs are kept only with it

    def _send_native(self, send_runs: SendRuns) -> None:
        """
        The kept runs, through the C loop: sent whole to every connection it
        may send to; the rest given to the Outboxes (L{Outbox.write_rest}
        for what the kernel refused, the queue for the others).
        """
        runs, self._runs = self._runs, []
        entries, self._entries = self._entries, []
        # No set of writers known: no Outbox is inline, the loop sends to none.
        writes = self.writes if self.writes is not None else set()
        frames, size, whole, rest, defer, plain, wire = send_runs(runs, writes)
        stats = self.stats
        stats.delivered += frames
        stats.bytes_out += size
        stats.writes += whole
        stats.direct += whole
        stats.deflate_plain += plain
        stats.deflate_wire += wire
        # The runs handed back, pushed as the Python loop does it (_spread),
        # run after run: each connection takes its runs in order.
        handed: dict[int, list[Outbox]] = {}
        for box, run in defer:
            handed.setdefault(run, []).append(box)
        for run in sorted(handed):
            self._spread(entries[run], handed[run])
        for box, buf, sent, count in rest:
            self._write_rest(box, buf, sent, count)

    def _write_rest(self, box: OutboxCore, buf: bytes, sent: int, count: int) -> None:
        """A direct send of C{count} frames took C{sent} bytes of C{buf}: Twisted takes the rest."""
        stats = self.stats
        stats.delivered += count
        stats.bytes_out += len(buf)
        stats.writes += 1
        try:
            box.write_rest(buf, sent)
        except Exception:
            log.failure("writing to {outbox}", outbox=box)

    def reconfigure(self, delay: float) -> None:
        """Take a reloaded flush window; a window already running keeps its end."""
        self.delay = delay

    def hold(self) -> None:
        """
        The caller publishes and then calls L{flush} before it returns (a
        delivery batch): until then, what it publishes schedules no
        end-of-turn write (a C{callLater} and its cancellation per batch
        saved). L{release} after the flush, in a C{finally}.
        """
        self._held = True

    def release(self) -> None:
        """The L{hold} is over; if the caller did not flush (it raised), write at the turn's end."""
        if self._held:
            self._held = False
            if self._runs or self._dirty or self._later:
                self._soon()

    def flush(self) -> bool:
        """
        The caller's events are all queued: write every outbox that got
        frames, now (True), or, with a flush window, when it ends (False;
        the window starts with the first event after the last write).
        """
        self._held = False
        if self.delay:
            if self._call is None:
                self._call = self.reactor.callLater(self.delay, self._turn_end)
            return False
        self.write()
        return True

    def write(self) -> None:
        """Write every outbox that got frames since the last write, now."""
        if self._runs:
            # First: the Outboxes it hands back are written below with the others.
            self._send_native(self.native)  # type: ignore[arg-type]  # runs are kept only with it
        call, self._call = self._call, None
        if call is not None and call.active():
            call.cancel()
        dirty, self._dirty = self._dirty, []
        frames = size = sent_whole = 0
        writes = self.writes
        for box in dirty:
            # Outbox.flush inlined for the common case: entries waiting on a
            # plain TCP connection (of an open OutboxHolder protocol: else
            # closed) for which Twisted holds nothing (its fd is not waiting
            # to be writable), no policy state; the kernel takes it all. The
            # rest goes through Outbox.flush.
            queue = box.queue
            if (box.inline and not (box.paused or box.closed or box.tracking)
                    # An inline box exists only while writes is known (Outbox).
                    and box.fdno not in writes):  # type: ignore[operator]
                if len(queue) == 2:
                    buf, tag = queue
                    count = 1 if tag.__class__ is str else tag.count
                elif queue:
                    # Several entries (a flush window collected them; no policy
                    # state, hence no conflated placeholders): one buffer.
                    buf = b"".join(queue[::2])
                    count = frame_count(queue[1::2])
                else:
                    continue    # written since it was marked (resumeProducing)
                queue.clear()
                box.room = box.cap
                try:
                    sent = box.sock.send(buf)  # type: ignore[union-attr]  # inline: a socket
                except OSError:
                    sent = 0    # as in Outbox.flush
                if sent == len(buf):
                    box.room = box.cap = box.limit
                    frames += count
                    size += sent
                    sent_whole += 1
                    continue
                self._write_rest(box, buf, sent, count)
                continue
            try:
                box.flush()
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
                log.failure("after-write callback {f}", f=f)

    def mark(self, box: OutboxCore) -> None:
        """C{box} took its first frame since its last write: write it with the others."""
        self._dirty.append(box)
        self._soon()

    def after_flush(self, f: Callable[[], None]) -> None:
        """Run C{f} at the next write, after the outboxes were written."""
        self._later.append(f)
        self._soon()

    def _turn_end(self) -> None:
        self._call = None
        self.write()

    def _soon(self) -> None:
        # At the end of this reactor turn, or of the flush window; under a
        # hold, at the caller's flush.
        if self._call is None and not self._held:
            self._call = self.reactor.callLater(self.delay, self._turn_end)

