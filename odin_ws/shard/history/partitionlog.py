"""
The retained events of one partition (L{PartitionLog}), in offset order,
with an index by channel so that a recovery visits the events of the
channels it asks for, not everything retained after its position.

Why the index (issue 23, H1/H2): a subscribe to 100 exact channels that
match nothing, with a position far back, scanned every retained event after
it (27,000 events, ~98 ms of reactor time) and could be re-sent ten times a
second. With the index, that recovery costs 100 dictionary look-ups per
partition; a recovery that matches much costs what it sends.

The index: per event type, per token, the partition's events of that
channel (a L{ChannelRun}, offset order). Keyed by type, then token, because
a pattern names a token and a type (either may be the wildcard) and event
types are few: an exact channel is two look-ups, C{T.*} one look-up per
event type of the partition, C{*.E} the runs of type E. Events leave a
partition oldest first, so an evicted event is always the oldest of its run:
eviction is O(1).
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable
from heapq import merge
from itertools import islice
from operator import attrgetter

from odin_ws.common.channels import WILDCARD
from odin_ws.common.events import Event

#: Bytes an event costs in history besides its envelope's payload: the Event
#: object (96 B with its slots), its channel, token, type and topic strings
#: (~220 B), the envelope's bytes header (33 B), its slots in the partition's
#: list and its channel run (16 B). Measured on CPython 3.11 (350-370 B with
#: tracemalloc, when an offsets list was kept beside the events; 400 leaves
#: room); tests/shard/history/test_store.py keeps it honest.
EVENT_OVERHEAD = 400

#: Bytes one channel's run costs in a partition's index beyond its events'
#: slots: the run (a list subclass, with its over-allocation) and its entry
#: in its type's dict. Measured on CPython 3.11 (~120 B with tracemalloc);
#: tests/shard/history/test_partitionlog.py keeps it honest.
CHANNEL_OVERHEAD = 160

#: A log's C{join} when any next offset continues it (see L{PartitionLog}).
ANY_OFFSET = 1 << 62

_offset = attrgetter("offset")


class ChannelRun(list[Event]):
    """One channel's events in one partition, offset order; those before C{start} are gone."""

    __slots__ = ("start",)

    def __init__(self) -> None:
        super().__init__()
        self.start = 0


def matches(patterns: Iterable[tuple[str, str]], event: Event) -> bool:
    """Whether C{event}'s channel matches one of C{patterns} (C{(token, type)}, C{*} allowed)."""
    for token, event_type in patterns:
        if (token == WILDCARD or token == event.token) and \
                (event_type == WILDCARD or event_type == event.event_type):
            return True
    return False


class PartitionLog:
    """Retained events of one partition, in offset order, indexed by channel."""

    __slots__ = ("epoch", "events", "start", "floor", "high", "bytes", "join", "runs",
                 "windowed")

    def __init__(self, epoch: str, floor: int):
        self.epoch = epoch
        #: Retained events from C{start} on (the slots before it are dead:
        #: compacted now and then, not per eviction).
        self.events: list[Event] = []
        self.start = 0
        #: Every event of this partition with an offset above C{floor} is retained.
        self.floor = floor
        #: Offset of the newest retained event (C{floor} when none is): kept,
        #: not looked up, as every live event compares its offset with it.
        self.high = floor
        self.bytes = 0
        #: The highest offset the next live event may have and still continue
        #: this log: after a backfill, the offset after what the warm-up read
        #: (records it passed over may follow, events it did not read may not).
        self.join = ANY_OFFSET
        #: event type -> token -> that channel's retained events.
        self.runs: dict[str, dict[str, ChannelRun]] = {}
        #: Whether C{floor} is the history's window (events evicted, or the
        #: warm-up's start), not merely where live delivery began: what is
        #: below it is then C{too_old}, else C{not_loaded}.
        self.windowed = False

    def __len__(self) -> int:
        return len(self.events) - self.start

    def oldest(self) -> Event | None:
        return self.events[self.start] if len(self) else None

    # -- writing

    def _run(self, event: Event) -> tuple[ChannelRun, int]:
        """C{event}'s run, made if new, and the bytes that cost."""
        tokens = self.runs.get(event.event_type)
        if tokens is None:
            tokens = self.runs[event.event_type] = {}
        run = tokens.get(event.token)
        if run is not None:
            return run, 0
        run = tokens[event.token] = ChannelRun()
        return run, CHANNEL_OVERHEAD

    def append(self, event: Event) -> int:
        """Retain C{event} (newer than every retained one); return the bytes it costs."""
        self.events.append(event)
        self.high = event.offset
        size = len(event.envelope) + EVENT_OVERHEAD
        try:    # the channel's run, nearly always there already
            self.runs[event.event_type][event.token].append(event)
        except KeyError:
            run, cost = self._run(event)
            run.append(event)
            size += cost
        self.bytes += size
        return size

    def pop_oldest(self) -> int:
        """Drop the oldest retained event; return the bytes that frees."""
        events = self.events
        start = self.start
        event = events[start]
        # The slot is below start, dead: None lets the event go (the list holds Events).
        events[start] = None  # type: ignore[call-overload]
        start += 1
        self.floor = event.offset
        self.windowed = True
        size = len(event.envelope) + EVENT_OVERHEAD
        if start > 64 and start * 2 > len(events):
            del events[:start]
            start = 0
        self.start = start
        tokens = self.runs[event.event_type]
        run = tokens[event.token]
        # Events leave in offset order: the partition's oldest is its run's oldest.
        first = run.start
        run[first] = None  # type: ignore[call-overload]
        first += 1
        if first == len(run):
            del tokens[event.token]
            if not tokens:
                del self.runs[event.event_type]
            size += CHANNEL_OVERHEAD
        elif first > 16 and first * 2 > len(run):
            del run[:first]
            run.start = 0
        else:
            run.start = first
        self.bytes -= size
        return size

    def prepend(self, events: list[Event]) -> int:
        """
        Older events (offset order, all below the retained ones); the floor
        follows. Return the bytes they cost.
        """
        if not len(self):
            self.high = events[-1].offset
        self.events = events + self.events[self.start:]
        self.start = 0
        self.floor = events[0].offset - 1
        self.windowed = True
        size = 0
        older: dict[tuple[str, str], list[Event]] = {}
        for e in events:
            older.setdefault((e.event_type, e.token), []).append(e)
            size += len(e.envelope) + EVENT_OVERHEAD
        for group in older.values():
            run, cost = self._run(group[0])
            run[:run.start] = group
            run.start = 0
            size += cost
        self.bytes += size
        return size

    # -- reading

    def count_after(self, offset: int) -> int:
        """How many retained events have an offset above C{offset} (no copy)."""
        return len(self.events) - bisect_right(self.events, offset, self.start, key=_offset)

    def after(self, offset: int) -> list[Event]:
        """Retained events with an offset above C{offset}, oldest first."""
        return self.events[bisect_right(self.events, offset, self.start, key=_offset):]

    def read(self, offset: int, patterns: Iterable[tuple[str, str]], max_scan: int,
             max_bytes: int) -> tuple[list[Event], int, int]:
        """
        A slice of what follows C{offset} for a connection's catch-up
        (L{odin_ws.shard.history.store.History.read}): the events matching
        C{patterns}, looking at no more than C{max_scan} events, stopping
        before the matched envelopes pass C{max_bytes} (one is always taken).

        Through the index when the channels' runs are fewer than what
        follows C{offset} (a connection of a few channels among many): it
        looks at the runs and the events it takes; C{last} is then the
        newest retained offset once every matching event was taken (what
        follows matches nothing), else the last event taken.

        @return: C{(events, last, looked)}: the offset of the last event
            looked at (C{offset} when none was), and how many were.
        """
        patterns = tuple(patterns)
        tail = self.count_after(offset)
        runs = self._runs_of(patterns) if tail > 8 else None
        if runs is not None and len(runs) < min(tail, max_scan):
            return self._read_runs(runs, offset, max_scan, max_bytes)
        i = first = bisect_right(self.events, offset, self.start, key=_offset)
        end = min(len(self.events), i + max_scan)
        out: list[Event] = []
        size = 0
        last = offset
        events = self.events
        while i < end:
            e = events[i]
            if matches(patterns, e):
                size += len(e.envelope)
                if size > max_bytes and out:
                    break
                out.append(e)
            last = e.offset
            i += 1
        return out, last, i - first

    def _read_runs(self, runs: list[ChannelRun], offset: int, max_scan: int,
                   max_bytes: int) -> tuple[list[Event], int, int]:
        """L{read} through the index: C{runs}' events after C{offset}, in offset order."""
        tails = [islice(run, max(bisect_right(run, offset, run.start, key=_offset), run.start),
                        None) for run in runs]
        out: list[Event] = []
        looked = len(runs)
        size = 0
        last = offset
        for e in merge(*tails, key=_offset):
            if looked >= max_scan:
                return out, last, looked
            size += len(e.envelope)
            if size > max_bytes and out:
                return out, last, looked
            out.append(e)
            last = e.offset
            looked += 1
        return out, self.high, looked

    def _runs_of(self, patterns: Iterable[tuple[str, str]]) -> list[ChannelRun] | None:
        """The runs C{patterns} match (each once); None when one pattern is C{*.*}."""
        runs = self.runs
        found: dict[int, ChannelRun] = {}
        for token, event_type in patterns:
            if event_type != WILDCARD:
                tokens = runs.get(event_type)
                if tokens is None:
                    continue
                if token != WILDCARD:
                    run = tokens.get(token)
                    if run is not None:
                        found[id(run)] = run
                else:
                    for run in tokens.values():
                        found[id(run)] = run
            elif token != WILDCARD:
                for tokens in runs.values():
                    run = tokens.get(token)
                    if run is not None:
                        found[id(run)] = run
            else:
                return None
        return list(found.values())

    def select(self, offset: int, patterns: list[tuple[str, str]],
               max_visits: int | None = None) -> tuple[list[Event] | None, int]:
        """
        The retained events after C{offset} that match C{patterns}, oldest
        first, and how many retained events or channel runs that looks at:
        through the index, or by scanning what follows C{offset} when that is
        less (a C{*.*} pattern; patterns matching most of the partition).
        Nothing is looked at when the count passes C{max_visits}: then the
        events are None.
        """
        tail = self.count_after(offset)
        runs = self._runs_of(patterns) if tail > len(patterns) else None
        if runs is not None and len(runs) < tail:
            starts = [max(bisect_right(run, offset, run.start, key=_offset), run.start)
                      for run in runs]
            visits = len(runs) + sum(len(run) - i for run, i in zip(runs, starts))
            if visits < tail:
                if max_visits is not None and visits > max_visits:
                    return None, visits
                out: list[Event] = []
                for run, i in zip(runs, starts):
                    out.extend(run[i:])
                out.sort(key=_offset)
                return out, visits
        if max_visits is not None and tail > max_visits:
            return None, tail
        return [e for e in self.after(offset) if matches(patterns, e)], tail
