"""
Positions (docs/protocol.md, "Positions, recovery and snapshots").

Every event carries ``pos``: ``<topic>:<partition>:<epoch>:<offset>``. The
contract treats it as opaque except for what recovery needs: everything
before the last ``:`` is the event's stream, and the offset after it grows
within a stream (not by one: Kafka offsets have holes). The library keeps,
per subscription, the last position seen per partition (``topic:partition``);
a partition's stream changes only when its topic is recreated (another
epoch), and then the new epoch's positions replace the old ones.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class Position:
    """A parsed position; ``text`` is the string as the server sent it."""

    text: str
    #: ``topic:partition``: where the library keeps one position.
    partition: str
    #: ``topic:partition:epoch``: offsets compare only within one stream.
    stream: str
    offset: int

    @classmethod
    def parse(cls, text: object) -> Position | None:
        """The position ``text``, or None if it is not one."""
        if not isinstance(text, str):
            return None
        stream, _, offset = text.rpartition(":")
        if not stream or not offset.isdigit() or not offset.isascii() or len(offset) > 30:
            return None
        topic_partition, _, epoch = stream.rpartition(":")
        return cls(text, topic_partition if epoch and topic_partition else stream, stream,
                   int(offset))

    def after(self, other: Position | None) -> bool:
        """Is this position after ``other``? True unless both are of one stream and it is not."""
        return other is None or other.stream != self.stream or self.offset > other.offset


class PositionMap:
    """The last position per partition: what a subscription recovers from."""

    def __init__(self, positions: Iterable[object] = ()) -> None:
        self._last: dict[str, Position] = {}
        for text in positions:
            self.advance(text)

    def is_new(self, text: object) -> bool:
        """
        Is ``text`` after the position held for its partition? True when none
        is held, when the held one is of another stream (a recreated topic),
        or when ``text`` is not a position (nothing to compare).
        """
        pos = Position.parse(text)
        return pos is None or pos.after(self._last.get(pos.partition))

    def advance(self, text: object) -> None:
        """Hold ``text`` for its partition if it is newer than what is held."""
        pos = Position.parse(text)
        if pos is not None and pos.after(self._last.get(pos.partition)):
            self._last[pos.partition] = pos

    def get(self, partition: str) -> Position | None:
        return self._last.get(partition)

    def fill(self, other: PositionMap) -> None:
        """Take ``other``'s positions of the partitions this map holds nothing of."""
        for partition, pos in other._last.items():
            self._last.setdefault(partition, pos)

    def clear(self) -> None:
        self._last.clear()

    def keep_ahead_of(self, tops: PositionMap) -> None:
        """
        After ``recovered: false``: keep only the positions past ``tops``' of
        their stream, or of partitions ``tops`` lacks (``ahead``: a node
        behind the one the client left), so that the live events the client
        has already are dropped; the others are of no more use.
        """
        self._last = {partition: pos for partition, pos in self._last.items()
                      if (top := tops.get(partition)) is None or not top.after(pos)}

    def copy(self) -> PositionMap:
        new = PositionMap()
        new._last = dict(self._last)
        return new

    def texts(self) -> list[str]:
        """The positions held, sorted (the ``since`` of a subscribe)."""
        return sorted(p.text for p in self._last.values())

    def __iter__(self) -> Iterator[Position]:
        return iter(self._last.values())

    def __len__(self) -> int:
        return len(self._last)
