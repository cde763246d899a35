"""
Event frames, built once for every connection that gets them.

Why frame ourselves: an event's frame is the same bytes for every client
(for every client that negotiated the same compression: L{Run}, and
L{odin_ws.shard.delivery.deflate}); L{text_frame} builds it once. Autobahn's
C{sendMessage} would frame (and compress) it per client and format a debug
line per call.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from odin_ws.shard.delivery.deflate import PLAIN, VARIANTS, Deflate

if TYPE_CHECKING:
    from odin_ws.common.events import Event

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
    connections (L{odin_ws.shard.delivery.fanout.Fanout.publish_run}): the frames it
    carries, with their channels and event types, for the slow-client
    policies and the counters, and the history events they carry (if they
    are: C{events[i]} is C{parts[i]}'s), where a slow outbox catches up from.
    """

    __slots__ = ("parts", "count", "events")

    def __init__(self, parts: list[tuple[bytes, str, str]], events: list[Event] | None = None):
        self.parts = parts
        self.count = len(parts)
        self.events = events

    def __repr__(self) -> str:
        return f"<Chunk of {self.count} frames>"


def frame_count(tags: list[Any]) -> int:
    """
    Frames in queue entries with these tags (a channel: one; a Chunk: its
    count). Typed Any: the class test below is the hot loop's, which mypy
    does not narrow on.
    """
    return sum(1 if tag.__class__ is str else tag.count for tag in tags)


class Run:
    """
    Consecutive event frames, each C{(frame, channel, event_type)}, for the
    same subscribers (L{odin_ws.shard.delivery.fanout.Fanout.publish_run}),
    and C{events}, the history events they carry (if they are).

    Its queue entry for each variant of connection (L{entry}: plain, or
    compressed for one server window) is built the first time a connection
    of that variant needs it, then kept: each frame is compressed at most
    once per variant, whatever the number of connections.
    """

    __slots__ = ("items", "events", "deflate", "_entries")

    def __init__(self, items: list[tuple[bytes, str, str]], events: list[Event] | None,
                 deflate: Deflate | None):
        self.items = items
        self.events = events
        self.deflate = deflate
        self._entries: list[tuple[tuple[bytes, Any], int] | None] = [None] * VARIANTS

    def entry(self, v: int) -> tuple[tuple[bytes, Any], int]:
        """The queue entry C{(buf, tag)} of variant C{v}, and its size."""
        entry = self._entries[v]
        if entry is None:
            entry = self._entries[v] = self._build(v)
        return entry

    def _build(self, v: int) -> tuple[tuple[bytes, Any], int]:
        if v != PLAIN and self.deflate is None:
            return self.entry(PLAIN)    # not compressed: every variant gets the plain frames
        items = self.variant_items(v)
        if len(items) == 1:
            frame, channel, _ = items[0]
            return (frame, channel), len(frame)
        chunk = b"".join([frame for frame, _, _ in items])
        return (chunk, Chunk(items, self.events)), len(chunk)

    def variant_items(self, v: int) -> list[tuple[bytes, str, str]]:
        """The frames of variant C{v}."""
        if v == PLAIN or self.deflate is None:
            return self.items
        frame_of = self.deflate.frame
        return [(frame_of(v, frame), channel, event_type)
                for frame, channel, event_type in self.items]

    def bufs(self, variants: list[int]) -> tuple[bytes | None, ...]:
        """
        For the C send loop: the joined buffer of each variant, indexed by
        variant, built for L{PLAIN} and C{variants}; None for the others
        (a run not compressed has the plain one only: the few connections
        of other variants it has take the Python loop).
        """
        if not variants or self.deflate is None:
            return (self.entry(PLAIN)[0][0],)
        out: list[bytes | None] = [None] * (variants[-1] + 1)
        for v in (PLAIN, *variants):
            out[v] = self.entry(v)[0][0]
        return tuple(out)

    def over(self, v: int) -> Callable[[Any], None]:
        """
        What an Outbox of variant C{v} without room for the whole entry
        does (typed Any: outbox.py imports this module).
        """
        (buf, tag), size = self.entry(v)
        if tag.__class__ is str:
            event = self.events[0] if self.events else None
            _, channel, event_type = self.items[0]
            return lambda box: box.overflow(buf, channel, event_type, size, event)
        return lambda box: box.push_parts(tag)
