"""
Catch-up from history: what a connection that fell behind is owed, kept as
positions, not frames (docs/protocol.md, "Slow clients: catch-up and gaps").

Why: under the C{drop} and C{disconnect} policies an Outbox whose buffer is
full used to drop frames, and the client could not know (positions are not
contiguous, so a hole is invisible). Every event a shard delivers is in its
L{History} already, so a full Outbox stops taking copies instead: it notes,
per stream (partition), the position after which it sent nothing
(L{Behind.note}: once per stream, an O(1) dict test per later event), and
when its socket drains it reads what it missed from history in slices
(L{Behind.slice}, bounded in events looked at and in bytes), then goes
back to live delivery in the same reactor turn as its last slice, so the
switch has no gap and no duplicate: no live frame was queued for it while
it was behind, and history holds every event delivered before that turn.

A stream whose position history no longer holds (evicted: the client was
away longer than the history window; the topic was recreated; the log
restarted) cannot be caught up: the client gets one L{gap_notice} naming
the stream and the position from which it may try to recover, and the
stream continues live.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from odin_ws.common.events import Event
from odin_ws.common.settings import Settings
from odin_ws.shard.delivery.frames import text_frame
from odin_ws.shard.delivery.writestats import WriteStats
from odin_ws.shard.history import positions
from odin_ws.shard.history.store import History

#: A stream: C{(topic, partition)}; its position: C{(epoch, offset)}.
Stream = tuple[str, int]
Position = tuple[str, int]

#: Why a gap notice was sent (its C{reason}) besides the history's reasons
#: (L{odin_ws.shard.history.store}: too_old, other_epoch, ahead, unknown_partition).
CONFLATED = "conflated"
#: Dropped past the outbound buffer by a transport without catch-up (SSE).
DROPPED = "dropped"
STALE = "stale"


class Backlog:
    """
    What catch-up reads, one per shard: the shard's history, the patterns a
    connection holds (C{patterns_of(outbox)}: the subscription index), how
    many retained events one slice may look at (C{limits.max_recovery_scan},
    the bound of one recovery), and the age past which an event is not
    sent as live (C{outbound.max_event_age}; C{clock}: wall-clock seconds,
    as the events' timestamps).
    """

    def __init__(self, history: History, patterns_of: Callable[[Any], Iterable[tuple[str, str]]],
                 settings: Settings, clock: Callable[[], float] = time.time):
        self.history = history
        self.patterns_of = patterns_of
        self.clock = clock
        self.reconfigure(settings)

    def reconfigure(self, settings: Settings) -> None:
        """Take a reloaded C{limits.max_recovery_scan} and C{outbound.max_event_age}."""
        self.max_scan = settings.limits.max_recovery_scan
        self.max_age = settings.outbound.max_event_age

    def cutoff(self) -> float:
        """Events with a timestamp (ms) below this are stale (-1: none is)."""
        max_age = self.max_age
        return (self.clock() - max_age) * 1000.0 if max_age > 0 else -1.0


class Slice:
    """One slice of catch-up: frames to queue, gaps to tell, whether it is all."""

    __slots__ = ("frames", "events", "stale", "gaps", "done")

    def __init__(self) -> None:
        #: C{(frame, channel)} in sending order (a stale notice's channel: "").
        self.frames: list[tuple[bytes, str]] = []
        self.events = 0
        #: Stale notices among the frames.
        self.stale = 0
        #: reason -> {stream: position from which the client may recover}.
        self.gaps: dict[str, dict[Stream, Position]] = {}
        #: Every stream reached history's newest event: live from now on.
        self.done = False


class Behind:
    """
    Per stream, the position after which a connection was sent nothing
    (C{streams}); C{disconnect}: it fell behind under the C{disconnect}
    policy (a gap closes it instead of being told; a stale notice does
    not); C{stale}: the streams already told that catch-up skipped stale
    events.
    """

    __slots__ = ("streams", "disconnect", "replay", "stale")

    def __init__(self, disconnect: bool = False, replay: bool = False):
        self.streams: dict[Stream, Position] = {}
        self.disconnect = disconnect
        #: A recovery the client asked for (streamed): stale events are
        #: replayed, as in a recovery answered at once.
        self.replay = replay
        self.stale: set[Stream] = set()

    def note(self, event: Event) -> None:
        """C{event} was not queued: its stream is behind from just before it, unless already."""
        key = (event.topic, event.partition)
        if key not in self.streams:
            self.streams[key] = (event.epoch or "0", event.offset - 1)

    def slice(self, backlog: Backlog, subscriber: Any, budget: int) -> Slice:
        """
        Read what C{subscriber} missed, stream after stream, up to C{budget}
        bytes of frames (at least one frame) and C{backlog.max_scan} events
        looked at; advance the positions. Streams that reached the newest
        retained event, or that history cannot serve (a gap), are dropped
        from C{streams}: their next event is live or noted again. Stale
        events are skipped, told once per stream (reason C{stale}).
        """
        out = Slice()
        history = backlog.history
        patterns = list(backlog.patterns_of(subscriber))
        scan = backlog.max_scan
        cutoff = -1.0 if self.replay else backlog.cutoff()
        streams = self.streams
        for key in list(streams):
            if scan <= 0 or budget <= 0:
                break
            epoch, offset = streams[key]
            topic, partition = key
            events, last, looked, reason = history.read(topic, partition, epoch, offset, patterns,
                                                scan, budget)
            if reason is not None:
                out.gaps.setdefault(reason, {})[key] = (epoch, offset)
                del streams[key]
                continue
            for e in events:
                if e.ts < cutoff:
                    if key not in self.stale:
                        # In its place among the frames: after the events before it.
                        self.stale.add(key)
                        out.frames.append((gap_notice(STALE, {key: (epoch, e.offset - 1)}), ""))
                        out.stale += 1
                    continue
                frame = text_frame(e.envelope)
                out.frames.append((frame, e.channel))
                budget -= len(frame)
                out.events += 1
            scan -= max(1, looked)
            if last == history.high(topic, partition):
                del streams[key]
            else:
                streams[key] = (epoch, last)
        out.done = not streams
        return out


class StaleNotices:
    """
    Events older than C{outbound.max_event_age} are not sent live (a backlog
    after a restart or a long lag): their subscribers are told, once per
    stream while its events stay stale (a stale episode), with the position
    before the first of them, from which they may recover (history keeps them).
    """

    def __init__(self, stats: WriteStats):
        self._stats = stats
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
                notice = gap_notice(STALE, {key: (event.epoch or "0", event.offset - 1)})
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
