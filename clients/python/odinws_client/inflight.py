"""
What a L{odinws_client.session.Session} has in flight on a connection:
requests waiting for their answer, replays of recovering subscribes whose
events are held until they are all here, snapshots still to come. All of
it is forgotten with the connection.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from odinws_client.positions import Position, PositionMap
from odinws_client.subscription import Subscription


@dataclass
class Request:
    """A request waiting for its answer."""

    type: str
    subs: list[Subscription] = field(default_factory=list)
    since: list[str] | None = None
    snapshot: bool = False
    #: A positions refresh: its errors do not matter (the next one will do).
    refresh: bool = False
    token: str | None = None
    answered: Callable[[dict[str, Any]], None] | None = None
    #: The recovery of a gap notice: the replay holding its streams' events.
    gap: Replay | None = None


@dataclass
class Replay:
    """The events a recovering subscribe brings: after ``since``, up to the ack's tops."""

    subs: list[Subscription]
    since: PositionMap
    #: None until the ack of a gap's recovery: everything after ``since``.
    tops: PositionMap | None
    left: int
    buffer: dict[str, dict[str, Any]] = field(default_factory=dict)

    def holds(self, pos: Position | None) -> bool:
        if pos is None:
            return False
        start = self.since.get(pos.partition)
        if start is None or not pos.after(start):
            return False
        if self.tops is None:
            return True
        top = self.tops.get(pos.partition)
        return top is not None and not pos.after(top)

    def past(self, pos: Position) -> bool:
        """Is ``pos`` past the tops (the replay, queued before it, is all here)?"""
        top = self.tops.get(pos.partition) if self.tops is not None else None
        return top is not None and pos.after(top)


@dataclass
class SnapshotWait:
    """Snapshot events still to come, and the subscriptions that asked for them."""

    subs: list[Subscription]
    left: int
