"""
Events to subscriptions, in order (the ordering facts are in
L{odinws_client.session}): each live subscription whose pattern matches
gets an event unless it holds its position or a later one; a replay's
events (and what arrives meanwhile for the streams it recovers) are held
and handed over in position order once the replay is complete; snapshot
events go to the subscriptions that asked for them; an ack's tops count
once an event past them came.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import Any

from odinws_client.inflight import Replay, SnapshotWait
from odinws_client.messages import Gap, event_of
from odinws_client.positions import Position, PositionMap
from odinws_client.subscription import Subscription


class Router:
    """
    The routing of one connection's events to the client's subscriptions.

    @param subs: the subscriptions held, by pattern (the session's, live).
    """

    def __init__(self, subs: dict[str, Subscription]) -> None:
        self._subs = subs
        #: Recoveries whose events are held until they are complete.
        self.replays: list[Replay] = []
        #: Snapshots asked for, in the order their events come.
        self.snapshots: deque[SnapshotWait] = deque()
        #: Events seen on this connection (when an ack's tops may count).
        self.events_seen = 0

    def clear(self) -> None:
        """The connection is gone: nothing in flight any more."""
        self.replays.clear()
        self.snapshots.clear()

    def event(self, msg: dict[str, Any]) -> None:
        self.events_seen += 1
        snapshot = msg.get("snapshot") is True
        pos = None if snapshot else Position.parse(msg.get("pos"))
        if pos is not None:
            # Past a replay's tops: the replay (queued before) is all here.
            for replay in list(self.replays):
                if replay.past(pos):
                    self.end_replay(replay)
        self._dispatch(msg, snapshot, pos)
        if pos is not None:
            # Past a subscription's pending tops: what was queued before its ack is here.
            for sub in self._subs.values():
                top = sub._tops.get(pos.partition) if sub._tops is not None else None
                if top is not None and pos.after(top):
                    self.confirm_tops(sub)

    def _dispatch(self, msg: dict[str, Any], snapshot: bool, pos: Position | None) -> None:
        """
        To every live subscription whose pattern matches, unless it holds
        this position or a later one of the partition. A snapshot event goes
        only to the subscriptions that asked for that snapshot.
        """
        channel = msg.get("channel")
        if not isinstance(channel, str):
            return
        segments = channel.split(".")
        wait = self.snapshots[0] if snapshot and self.snapshots else None
        if snapshot and wait is None:
            return
        filled: list[Replay] = []
        for sub in list(self._subs.values()):
            if not sub._live or not sub.matches(segments):
                continue
            if wait is not None:
                if any(s is sub for s in wait.subs):
                    sub._last.advance(msg.get("pos"))
                    sub._push(event_of(msg))
                continue
            replay = sub._replay
            if replay is not None and replay.holds(pos):
                assert pos is not None
                replay.buffer.setdefault(pos.text, msg)
                if replay not in filled:
                    filled.append(replay)
                continue
            self._deliver(sub, msg)
        if wait is not None:
            wait.left -= 1
            if wait.left <= 0:
                self.snapshots.popleft()
        for replay in filled:
            if len(replay.buffer) >= replay.left:
                self.end_replay(replay)

    def _deliver(self, sub: Subscription, msg: dict[str, Any]) -> None:
        pos = msg.get("pos")
        if pos is not None:
            if not sub._last.is_new(pos):
                return
            sub._last.advance(pos)
        if msg.get("type") == "gap":    # an undecodable record (Session._hole)
            sub._push(Gap(str(msg.get("reason")), channel=msg.get("channel"), pos=pos))
            return
        sub._push(event_of(msg))

    def end_replay(self, replay: Replay) -> None:
        """A replay is complete: its events, in position order, to its subscriptions."""
        if replay not in self.replays:
            return
        self.replays.remove(replay)
        for sub in replay.subs:
            if sub._replay is replay:
                sub._replay = None
        parsed = [(Position.parse(text), msg) for text, msg in replay.buffer.items()]
        parsed.sort(key=lambda item: (item[0].partition, item[0].offset) if item[0] else ("", 0))
        for _, msg in parsed:
            segments = str(msg.get("channel")).split(".")
            for sub in self.current(replay.subs):
                if sub._live and sub.matches(segments):
                    self._deliver(sub, msg)

    def pend_tops(self, sub: Subscription, tops: PositionMap) -> None:
        """Hold ``tops`` until an event past them; older ones count now if no event came since."""
        if sub._tops is not None and sub._tops_seen == self.events_seen:
            self.confirm_tops(sub)
        merged = sub._tops.copy() if sub._tops is not None else PositionMap()
        for pos in tops:
            merged.advance(pos.text)
        sub._tops = merged if len(merged) else None
        sub._tops_seen = self.events_seen

    def confirm_tops(self, sub: Subscription) -> None:
        for pos in sub._tops or ():
            sub._last.advance(pos.text)
        sub._tops = None

    def current(self, subs: Iterable[Subscription]) -> list[Subscription]:
        """Those of ``subs`` still held (not unsubscribed since the request)."""
        return [s for s in subs if self._subs.get(s.pattern) is s]
