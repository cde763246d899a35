"""
One WebSocket client connection of C{odinws-loadtest}, on a plain asyncio
transport with a minimal frame parser (L{Conn}).

Why not the C{websockets} library: per connection this keeps one small
object and no task once subscribed, and per frame a header decode and one
JSON scan. With C{websockets} each connection carries a reader task, a
keepalive task and a message queue: measured on this project's 2-core test
machine with 3,000 connections, 2.5-3.5x the memory per connection (26-37
against 11 KiB) and 1.1-1.4x the CPU per event; and it is not an install
requirement of odinws. The worker process that runs thousands of these is
L{odinws_tools.loadtest.worker}.

What a connection measures: why it failed to open (HTTP status, refused,
timeout, ...), the end-to-end latency of every event (receive time minus the
event's Kafka timestamp), gaps and duplicates per channel from the events'
C{seq} field, and the events it received within the completeness window
(see L{odinws_tools.loadtest.stats.Completeness}).
"""

from __future__ import annotations

import asyncio
import base64
import errno
import hashlib
import json
import json.scanner
import os
import struct
import sys
import time
from typing import TYPE_CHECKING

from odinws_tools.loadtest.stats import SeqCheck

if TYPE_CHECKING:
    from odinws_tools.loadtest.worker import Worker

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#: Channels per subscribe message (the server's default limit is 100).
SUBSCRIBE_CHUNK = 100
# json.loads minus its Python wrappers (encoding detection, whitespace
# checks): a third of the per-event cost (measured).
_scan = json.scanner.c_make_scanner(json.JSONDecoder())  # type: ignore[attr-defined]  # C-only, not in typeshed

HANDSHAKE, OPEN, CLOSED = 0, 1, 2


def failure_reason(exc: BaseException) -> str:
    """A short stable name for why a connection could not be opened."""
    if isinstance(exc, ConnectFailed):
        return exc.reason
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, ConnectionResetError):
        return "reset"
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError)):
        return "timeout"
    if isinstance(exc, OSError) and exc.errno is not None and exc.errno in errno.errorcode:
        return errno.errorcode[exc.errno].lower()
    return type(exc).__name__


class ConnectFailed(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def mask_frame(opcode: int, payload: bytes, mask: bytes | None = None) -> bytes:
    """A final client frame (masked, as RFC 6455 requires of clients)."""
    mask = mask or os.urandom(4)
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    key = (mask * (n // 4 + 1))[:n]
    body = (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")
    return head + mask + body


class Conn(asyncio.Protocol):
    """One client connection: upgrade, subscribe, then count and check events."""

    __slots__ = ("w", "g", "patterns", "transport", "buf", "state", "key", "opened",
                 "subscribed", "acks", "t_sub_ms", "in_window", "events", "seqs", "frags",
                 "ended", "lost", "closing")

    def __init__(self, worker: Worker, g: int, patterns: tuple[str, ...]):
        loop = worker.loop
        self.w = worker
        self.g = g
        self.patterns = patterns
        # None only until connection_made (the worker's failure path checks);
        # every callback that writes runs after it.
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.buf = b""
        self.state = HANDSHAKE
        self.key = base64.b64encode(os.urandom(16))
        self.opened = loop.create_future()
        self.subscribed = loop.create_future()
        self.acks = 0
        self.t_sub_ms: float | None = None
        self.in_window = 0
        self.events = 0
        self.seqs = SeqCheck()
        self.frags: list[bytes] | None = None
        self.ended = loop.create_future()
        self.lost: str | None = None
        self.closing = False
        for f in (self.opened, self.subscribed):
            # A failure after the opener gave up (timeout) is expected: no warning.
            f.add_done_callback(_retrieve)

    # asyncio.Protocol
    def connection_made(self, transport) -> None:
        self.transport = transport
        w = self.w
        transport.write(b"GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\n"
                        b"Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
                        b"Sec-WebSocket-Version: 13\r\n\r\n"
                        % (w.spec.path.encode(), w.spec.host_header.encode(), self.key))

    def connection_lost(self, exc) -> None:
        if self.state != CLOSED and not self.closing:
            self._end("dropped")
        self.state = CLOSED
        for f in (self.opened, self.subscribed):
            if not f.done():
                f.set_exception(ConnectFailed("closed_during_handshake"))
        if not self.ended.done():
            self.ended.set_result(None)

    def data_received(self, data: bytes) -> None:
        if self.state == HANDSHAKE:
            data = self._handshake(data)
            if not data:
                return
        buf = self.buf + data if self.buf else data
        n = len(buf)
        pos = 0
        now_ms = time.time() * 1000.0
        while n - pos >= 2:
            b0 = buf[pos]
            if buf[pos + 1] & 0x80:
                # A server must never mask (RFC 6455 5.1): the client fails it.
                self._end("masked_frame")
                self.state = CLOSED
                self.transport.abort()
                return
            length = buf[pos + 1] & 0x7F
            head = 2
            if length == 126:
                if n - pos < 4:
                    break
                length = int.from_bytes(buf[pos + 2:pos + 4], "big")
                head = 4
            elif length == 127:
                if n - pos < 10:
                    break
                length = int.from_bytes(buf[pos + 2:pos + 10], "big")
                head = 10
            end = pos + head + length
            if end > n:
                break
            payload = buf[pos + head:end]
            pos = end
            opcode = b0 & 0x0F
            if opcode == 1 and b0 & 0x80:
                self._text(payload, now_ms)
            elif opcode in (0, 1):
                self._fragment(opcode, payload, b0 & 0x80, now_ms)
            elif opcode == 9:
                self.transport.write(mask_frame(10, payload))
            elif opcode == 8:
                self._server_close(payload)
                return
        self.buf = buf[pos:]

    # internals
    def _handshake(self, data: bytes) -> bytes:
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buf) > 65536:
                self._fail("bad_response")
            return b""
        head, rest = self.buf[:end], self.buf[end + 4:]
        self.buf = b""
        lines = head.split(b"\r\n")
        parts = lines[0].split(None, 2)
        status = parts[1].decode("ascii", "replace") if len(parts) > 1 else "?"
        if status != "101":
            self._fail(f"http_{status}")
            return b""
        accept = base64.b64encode(hashlib.sha1(self.key + _GUID).digest())
        if not any(line.lower().startswith(b"sec-websocket-accept:")
                   and line.split(b":", 1)[1].strip() == accept for line in lines[1:]):
            self._fail("bad_accept")
            return b""
        self.state = OPEN
        self.opened.set_result(None)
        chunks = [self.patterns[i:i + SUBSCRIBE_CHUNK]
                  for i in range(0, len(self.patterns), SUBSCRIBE_CHUNK)]
        self.acks = len(chunks)
        for i, chunk in enumerate(chunks):
            msg = json.dumps({"type": "subscribe", "channels": list(chunk), "id": i})
            self.transport.write(mask_frame(1, msg.encode()))
        return rest

    def _fail(self, reason: str) -> None:
        for f in (self.opened, self.subscribed):
            if not f.done():
                f.set_exception(ConnectFailed(reason))
        self.state = CLOSED
        self.transport.abort()

    def _fragment(self, opcode: int, payload: bytes, fin: int, now_ms: float) -> None:
        if opcode == 1:
            self.frags = [payload]
        elif self.frags is not None:
            self.frags.append(payload)
        if fin and self.frags is not None:
            whole, self.frags = b"".join(self.frags), None
            self._text(whole, now_ms)

    def _text(self, payload: bytes, now_ms: float) -> None:
        try:
            msg = _scan(payload.decode(), 0)[0]
            kind = msg.get("type")
        except (StopIteration, ValueError, AttributeError):
            self.w.malformed += 1
            return
        if kind != "event":
            self._control(kind, msg)
            return
        w = self.w
        ts = msg["ts"]
        w.tick_hist.add(now_ms - ts)
        w.tick_events += 1
        self.events += 1
        data = msg["data"]
        seq = data.get(w.seq_field) if type(data) is dict else None
        if type(seq) is not int:
            w.no_seq += 1
            return
        channel = sys.intern(msg["channel"])
        skipped = self.seqs.observe(channel, seq)
        if skipped:
            bucket = w.duplicates if skipped < 0 else w.gaps
            bucket[channel] = bucket.get(channel, 0) + (1 if skipped < 0 else skipped)
            if skipped < 0:
                return
        if self.t_sub_ms is not None and self.t_sub_ms < ts <= w.hold_end_ms:
            self.in_window += 1
        seen = w.seen.get(channel)
        if seen is None:
            seen = w.seen[channel] = {}
        if seq not in seen:
            seen[seq] = ts

    def _control(self, kind, msg: dict) -> None:
        if kind == "subscribed" and self.acks:
            self.acks -= 1
            if not self.acks:
                self.t_sub_ms = time.time() * 1000.0
                self.subscribed.set_result(None)
        elif kind == "gap":
            # The server says it skipped events (docs/protocol.md): counted by
            # reason, so a report tells announced gaps from silent ones.
            reason = str(msg.get("reason"))
            self.w.gap_notices[reason] = self.w.gap_notices.get(reason, 0) + 1
        elif kind == "error" and not self.subscribed.done():
            self._fail(f"subscribe_error_{msg.get('code')}")

    def _server_close(self, payload: bytes) -> None:
        code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
        if not self.closing:
            self._end(f"closed_{code}")
            self.transport.write(mask_frame(8, payload[:2]))
        self.state = CLOSED
        self.transport.close()

    def _end(self, reason: str) -> None:
        if self.subscribed.done() and not self.subscribed.exception() and not self.lost:
            self.lost = reason
            self.w.lost += 1

    def close(self) -> None:
        """Start a normal close (1000); the server answers and drops the TCP connection."""
        if self.state == OPEN and not self.closing:
            self.closing = True
            self.transport.write(mask_frame(8, struct.pack("!H", 1000)))
        elif self.transport is not None and self.state != OPEN:
            self.transport.abort()


def _retrieve(future: asyncio.Future) -> None:
    if not future.cancelled():
        future.exception()
