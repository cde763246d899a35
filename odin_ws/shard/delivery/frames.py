"""
Event frames, built once for every connection that gets them.

Why frame ourselves: the server accepts no compression, so an event's frame
is the same bytes for every client; L{text_frame} builds it once. Autobahn's
C{sendMessage} would frame it per client and format a debug line per call.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Any

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
