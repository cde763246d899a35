"""
What a connection that fell behind is owed, kept as positions, not frames
(L{Behind}), and how it is read back from the shard's history in slices
(L{Backlog}, L{Slice}); the outbox's side of it is
L{odin_ws.shard.delivery.catchup}.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from odin_ws.common.events import Event
from odin_ws.common.settings import Settings
from odin_ws.shard.delivery.frames import text_frame
from odin_ws.shard.delivery.gaps import STALE, Position, Stream, gap_notice
from odin_ws.shard.history.holes import is_hole
from odin_ws.shard.history.store import History


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
                 settings: Settings, clock: Callable[[], float] = time.time,
                 keeps: Callable[[Any], Callable[[Event], bool] | None] = lambda box: None):
        self.history = history
        self.patterns_of = patterns_of
        #: Per connection, which of the events its patterns match it gets
        #: (None: all): its subscriptions' filters (docs/protocol.md,
        #: "Subscription options").
        self.keeps = keeps
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

    __slots__ = ("frames", "events", "stale", "holes", "gaps", "done")

    def __init__(self) -> None:
        #: C{(frame, channel)} in sending order (a stale notice's channel: "").
        self.frames: list[tuple[bytes, str]] = []
        self.events = 0
        #: Stale notices among the frames.
        self.stale = 0
        #: Holes (undecodable records) a streamed recovery replays among the
        #: frames (gap notices too), from before it began (L{Behind.replayed}).
        #: Not counted otherwise: live delivery counted the connection as
        #: told when it sent the run, also where it only noted it (behind).
        self.holes = 0
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

    __slots__ = ("streams", "disconnect", "replay", "stale", "replayed")

    def __init__(self, disconnect: bool = False, replay: bool = False):
        self.streams: dict[Stream, Position] = {}
        self.disconnect = disconnect
        #: A recovery the client asked for (streamed): stale events are
        #: replayed, as in a recovery answered at once.
        self.replay = replay
        self.stale: set[Stream] = set()
        #: Per stream of a streamed recovery, the offset through which its
        #: holes are the replay's to count (L{replaying}); the later ones
        #: live delivery counted as it noted them (issue 22: counted twice).
        self.replayed: dict[Stream, int] = {}

    def replaying(self, since: dict[Stream, Position], high: Callable[[Stream], int | None]) -> None:
        """
        A streamed recovery from C{since}: each stream is read again from
        there. Its holes are counted by the replay through where live
        delivery stopped for this connection: the position it was noted at
        (behind already), else the newest event history holds (C{high}).
        """
        self.replay = True
        replayed = self.replayed
        streams = self.streams
        for key, position in since.items():
            noted = streams.get(key)
            through = noted[1] if noted is not None else high(key)
            replayed[key] = through if through is not None else position[1]
            streams[key] = position

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
        keeps = backlog.keeps(subscriber)
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
                if keeps is not None and not keeps(e):
                    continue
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
                if self.replay and is_hole(e) and e.offset <= self.replayed.get(key, -1):
                    out.holes += 1
            scan -= max(1, looked)
            if last == history.high(topic, partition):
                del streams[key]
            else:
                streams[key] = (epoch, last)
        out.done = not streams
        return out
