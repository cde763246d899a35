"""
What a client is told when odinws gives up on events it subscribed to
(docs/protocol.md, "gap" and "Slow clients: catch-up and gaps"): the
C{gap} message and its reasons, and who was told of stale events. Never
silent: every event a connected client does not get is counted and told.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

from odin_ws.common.events import Event
from odin_ws.shard.delivery.frames import text_frame
from odin_ws.shard.delivery.writestats import WriteStats
from odin_ws.shard.history import positions

#: A stream: C{(topic, partition)}; its position: C{(epoch, offset)}.
Stream = tuple[str, int]
Position = tuple[str, int]

#: Why a gap notice was sent (its C{reason}) besides the history's reasons
#: (L{odin_ws.shard.history.store}: too_old, other_epoch, ahead, unknown_partition).
CONFLATED = "conflated"
#: Dropped past the outbound buffer by a transport without catch-up (SSE).
DROPPED = "dropped"
STALE = "stale"


def count_told(stats: WriteStats, reason: str, streams: int) -> None:
    """
    C{streams} more named in gap notices of C{reason}
    (C{odinws_gaps_notified_total}): for holes, the recipients of a run,
    counted where the run is sent, not per subscriber.
    """
    if streams:
        stats.gaps[reason] = stats.gaps.get(reason, 0) + streams


class DropTeller(Protocol):
    """
    What tells a client of events its outbox dropped (a transport without
    catch-up: L{odin_ws.shard.delivery.ssefeed.DropNotices}).
    """

    #: The notice naming everything dropped so far (None: nothing was).
    notice: bytes | None

    def dropped(self, event: Event) -> bytes:
        """C{event} was dropped: the notice to send (a new one if it names more)."""
        ...


class StaleNotices:
    """
    Events older than C{outbound.max_event_age} are not sent live (a backlog
    after a restart or a long lag): their subscribers are told, once per
    stream while its events stay stale (a stale episode), with the position
    before the first of them, from which they may recover (history keeps them).

    @param notice: the notice of a stream's position before its first stale
        event, in the transport's message (a WebSocket frame by default;
        SSE's is L{odin_ws.shard.delivery.ssefeed.Streams.stale_notice}).
    """

    def __init__(self, stats: WriteStats,
                 notice: Callable[[Stream, Position], bytes] | None = None):
        self._stats = stats
        self._notice = notice or _stale_frame
        #: Streams in a stale episode, and the connections told of it.
        self.told: dict[Stream, set[Any]] = {}

    def stale(self, event: Event, subscribers: Iterable[Any]) -> None:
        """
        C{event} is not sent to C{subscribers}: tell those not told yet
        (before newer events). One that is behind notes it instead: its
        catch-up reaches it in order and tells it then (a notice now would
        overtake the events it is still owed).
        """
        key = (event.topic, event.partition)
        told = self.told.setdefault(key, set())
        notice = None
        for box in subscribers:
            if box in told:
                continue
            behind = box.behind
            if behind is not None:
                behind.note(event)
                continue
            told.add(box)
            if notice is None:
                notice = self._notice(key, (event.epoch or "0", event.offset - 1))
            box.push_control(notice)
            self._stats.gaps[STALE] = self._stats.gaps.get(STALE, 0) + 1

    def forget(self, subscriber: Any) -> None:
        """
        C{subscriber} recovers from positions (it may have been told): what
        it is told of from now on is new to it (its recovery ends before).
        """
        for told in self.told.values():
            told.discard(subscriber)

    def fresh(self, event: Event) -> None:
        """A live event of its stream: the stream's stale episode (if any) is over."""
        self.told.pop((event.topic, event.partition), None)


def _stale_frame(stream: Stream, before: Position) -> bytes:
    """The WebSocket C{gap} frame of a stale episode of C{stream}."""
    return gap_notice(STALE, {stream: before})


def conflated_notice(skipped: Mapping[str, int]) -> bytes:
    """
    The C{gap} message of conflation (a WebSocket text frame): per channel,
    how many events gave way to a newer one. Nothing to recover: the
    client chose the latest value over every event.
    """
    body = json.dumps({"type": "gap", "reason": CONFLATED, "channels": dict(skipped)},
                      separators=(",", ":"))
    return text_frame(body.encode())


def gap_notice(reason: str, streams: Mapping[Stream, Position | None]) -> bytes:
    """
    The C{gap} message (a WebSocket text frame) for C{streams}: each maps to
    the position from which the client may recover (None: it cannot).
    """
    body = json.dumps(gap_body(reason, streams), separators=(",", ":"))
    return text_frame(body.encode())


def gap_body(reason: str, streams: Mapping[Stream, Position | None]) -> dict[str, Any]:
    """The JSON object of a C{gap} message (L{gap_notice}), for any transport."""
    named = {}
    for (topic, partition), position in sorted(streams.items(), key=lambda kv: kv[0]):
        epoch = position[0] if position is not None else "0"
        stream = f"{topic}:{partition}:{epoch}"
        # Before a partition's first offset (0) there is no position to name.
        named[stream] = (positions.encode(topic, partition, *position)
                         if position is not None and position[1] >= 0 else None)
    return {"type": "gap", "reason": reason, "streams": named}
