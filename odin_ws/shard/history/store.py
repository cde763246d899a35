"""
The recent past of every partition a shard delivers, kept in memory for
recovery (replay after a client's last positions) and the latest event of
every channel for snapshots (docs/protocol.md, "Positions and recovery").

Each shard keeps its own copy: every shard delivers every event (its own
partitions' and, through the hub, the others'), so recovery and snapshots
are answered inside the shard's reactor turn, with no call to another
process, and a subscribe that recovers can switch to live delivery in the
same turn with no gap and no duplicate (docs/architecture.md).

Bounds: a count and an age per partition, and a byte budget for the whole
history of the shard (envelope bytes plus a fixed per-event overhead). The
latest-event cache holds one event per channel, at most a set number of
channels, least recently updated dropped first.

Live events are added one by one (L{History.add}); the warm-up of a
starting shard (L{odin_ws.shard.kafka.warmup}) adds what it read back from Kafka
with L{History.backfill}, which only joins what it can prove continuous
with what live delivery has added meanwhile.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from odin_ws.common.channels import WILDCARD, channel_name
from odin_ws.common.events import Event
from odin_ws.shard.history.partitionlog import ANY_OFFSET, EVENT_OVERHEAD, PartitionLog

#: Why a recovery could not be answered (the C{reason} of C{recovered: false}).
TOO_OLD = "too_old"            # events after the position were evicted, or older than
#                                what the warm-up reads back (the history's window)
NOT_LOADED = "not_loaded"      # events after the position were never loaded here: the
#                                warm-up had not (or could not) read them back
AHEAD = "ahead"                # the position is past what this node has seen
OTHER_EPOCH = "other_epoch"    # the topic was recreated / another cluster
UNKNOWN = "unknown_partition"  # this node retains nothing of that partition
TOO_LARGE = "too_large"        # more to look at or to send than a recovery may


def _never() -> bool:
    return False


class History:
    """
    @param max_events: events kept per partition.
    @param max_age: seconds an event is kept (by its Kafka timestamp).
    @param max_bytes: bytes of history for the whole shard.
    @param max_channels: channels in the latest-event (snapshot) cache.
    @param clock: seconds since the epoch.
    """

    def __init__(self, max_events: int, max_age: float, max_bytes: int, max_channels: int,
                 clock: Callable[[], float]):
        self._clock = clock
        self._logs: dict[tuple[str, int], PartitionLog] = {}
        self._latest: dict[str, Event] = {}
        # The cache's channels by token and by event type, as the
        # subscription index buckets wildcards: a snapshot visits the
        # channels its patterns can match, never the whole cache (issue 23,
        # H3: 100 patterns matching nothing scanned 100,000 channels each).
        self._latest_by_token: dict[str, dict[str, None]] = {}
        self._latest_by_type: dict[str, dict[str, None]] = {}
        self._latest_bytes = 0
        #: Cache entries snapshots visited, all told (what their work is).
        self.snapshot_visits = 0
        #: Retained events recoveries visited, all told.
        self.replay_visits = 0
        self.bytes = 0
        #: Evictions by reason: count, age, budget.
        self.evicted = {"count": 0, "age": 0, "budget": 0}
        #: Whether the warm-up is still reading the past back (set by the
        #: shard): a partition without a log then is C{not_loaded}, not unknown.
        self.loading: Callable[[], bool] = _never
        self.configure(max_events, max_age, max_bytes, max_channels)

    def configure(self, max_events: int, max_age: float, max_bytes: int,
                  max_channels: int) -> None:
        """New bounds (a reload); applied at once."""
        self.max_events = max_events
        self.max_age_ms = int(max_age * 1000)
        self.max_bytes = max_bytes
        self.max_channels = max_channels
        self._trim_all()
        while len(self._latest) > max_channels:
            self._forget_latest(next(iter(self._latest)))

    # -- state

    @property
    def events(self) -> int:
        return sum(len(log) for log in self._logs.values())

    @property
    def channels(self) -> int:
        return len(self._latest)

    @property
    def snapshot_bytes(self) -> int:
        """Bytes the latest-event cache holds (counted as if none were in history)."""
        return self._latest_bytes

    def _forget_latest(self, channel: str) -> None:
        event = self._latest.pop(channel)
        self._latest_bytes -= len(event.envelope) + EVENT_OVERHEAD
        for buckets, key in ((self._latest_by_token, event.token),
                             (self._latest_by_type, event.event_type)):
            bucket = buckets[key]
            del bucket[channel]
            if not bucket:
                del buckets[key]

    def _remember_latest(self, event: Event) -> None:
        channel = event.channel
        self._latest[channel] = event
        self._latest_by_token.setdefault(event.token, {})[channel] = None
        self._latest_by_type.setdefault(event.event_type, {})[channel] = None
        self._latest_bytes += len(event.envelope) + EVENT_OVERHEAD

    def window(self) -> float | None:
        """Seconds covered by the shortest partition history (None when empty)."""
        now_ms = self._clock() * 1000
        ages = [now_ms - log.events[log.start].ts for log in self._logs.values() if len(log)]
        return max(0.0, min(ages) / 1000.0) if ages else None

    def partitions(self) -> Iterator[tuple[str, int, PartitionLog]]:
        for (topic, partition), log in self._logs.items():
            yield topic, partition, log

    # -- writing (the hot path: once per delivered event)

    def add(self, event: Event) -> None:
        """Retain C{event} (fresh: de-duplicated already) under its topic's epoch."""
        log = self._logs.get((event.topic, event.partition))
        offset = event.offset
        if log is None or offset <= log.high or offset > log.join \
                or log.epoch != (event.epoch or "0"):
            # A new partition, a new incarnation of its topic, offsets that
            # went back (the broker was replaced), or a gap after what a
            # backfill read: start this log afresh.
            if log is not None:
                self.bytes -= log.bytes
            log = self._logs[event.topic, event.partition] = PartitionLog(event.epoch or "0",
                                                                          offset - 1)
        elif log.join != ANY_OFFSET:
            log.join = ANY_OFFSET   # live delivery took over from the backfill
        self.bytes += log.append(event)
        if self.max_channels:
            latest = self._latest
            channel = event.channel
            older = latest.pop(channel, None)
            if older is not None:
                # Re-inserted last (least recently updated first); the same
                # channel, so its token's and type's buckets already hold it.
                latest[channel] = event
                self._latest_bytes += len(event.envelope) - len(older.envelope)
            else:
                if len(latest) >= self.max_channels:
                    self._forget_latest(next(iter(latest)))
                self._remember_latest(event)
        self._trim(log)

    def _trim(self, log: PartitionLog) -> None:
        """The bounds, after one event was added to C{log} (one test each when none is passed)."""
        if len(log.events) - log.start > self.max_events:
            self.bytes -= log.pop_oldest()
            self.evicted["count"] += 1
        max_age_ms = self.max_age_ms
        if max_age_ms > 0 and log.start < len(log.events):
            cutoff = self._clock() * 1000 - max_age_ms
            while log.events[log.start].ts < cutoff and len(log) > 1:
                self.bytes -= log.pop_oldest()
                self.evicted["age"] += 1
        while self.bytes > self.max_bytes:
            victim = self._oldest_log()
            if victim is None:
                break
            self.bytes -= victim.pop_oldest()
            self.evicted["budget"] += 1

    def _trim_all(self) -> None:
        for log in self._logs.values():
            self._fit(log)

    def _fit(self, log: PartitionLog) -> None:
        while len(log) > self.max_events:
            self.bytes -= log.pop_oldest()
            self.evicted["count"] += 1
        self._trim(log)

    # -- backfill (a starting shard's warm-up, odin_ws/shard/kafka/warmup.py)

    def backfill(self, events: Iterable[Event],
                 through: Mapping[tuple[str, int], int] | None = None) -> set[tuple[str, int]]:
        """
        Add events read back from Kafka, older than (or overlapping) what live
        delivery added, in offset order per partition. For each partition the
        reader saw every record from its first event's offset through
        C{through[(topic, partition)]} (default: its last event's offset; the
        records in between that are not here were not events).

        * No log yet: the backfill becomes the log (floor: its first offset -
          1); a live event after more than C{through} + 1 then starts the log
          afresh (the reader's end and live delivery's start do not meet).
        * A log of the same epoch that the backfill meets or overlaps: the
          older events go in front (the floor goes down), newer ones at the
          end; the caller counts offsets up to C{through} as seen, so live
          delivery does not bring them again.
        * A gap on either side, or another epoch: the log stays as it is.

        The latest-event cache takes a backfilled event only where it holds
        nothing newer for the channel. Every bound applies afterwards.

        @return: the partitions whose log now holds the backfill.
        """
        groups: dict[tuple[str, int], list[Event]] = {}
        for e in events:
            groups.setdefault((e.topic, e.partition), []).append(e)
        kept = set()
        for key, group in groups.items():
            end = through.get(key, group[-1].offset) if through else group[-1].offset
            if self._backfill_partition(key, group, max(end, group[-1].offset)):
                kept.add(key)
        return kept

    def _backfill_partition(self, key: tuple[str, int], events: list[Event], end: int) -> bool:
        epoch = events[0].epoch or "0"
        first = events[0].offset
        log = self._logs.get(key)
        if log is not None and log.epoch != epoch:
            return False   # another incarnation: live delivery knows the current one
        self._remember_older(events)
        if log is None:
            log = self._logs[key] = PartitionLog(epoch, first - 1)
            older, newer = [], events
        elif end < log.floor or first - 1 > log.high:
            return False   # a gap between the two: continuity cannot be proved
        else:
            older = [e for e in events if e.offset <= log.floor]
            newer = [e for e in events if e.offset > log.high]
        if older:
            self.bytes += log.prepend(older)
        for e in newer:
            self.bytes += log.append(e)
        if newer:
            log.join = end + 1
        # Below the log now is below what the warm-up read back: the window.
        log.windowed = True
        self._fit(log)
        return True

    def _remember_older(self, events: list[Event]) -> None:
        """The latest-event cache, for backfilled events: never over a newer event."""
        if not self.max_channels:
            return
        latest = self._latest
        for e in events:
            current = latest.get(e.channel)
            if current is not None:
                if current.topic == e.topic and current.partition == e.partition \
                        and current.epoch == e.epoch:
                    if current.offset >= e.offset:
                        continue
                elif current.ts >= e.ts:
                    continue
                self._forget_latest(e.channel)
            elif len(latest) >= self.max_channels:
                lru = next(iter(latest))
                if latest[lru].ts >= e.ts:
                    continue   # a full cache of newer events
                self._forget_latest(lru)
            self._remember_latest(e)

    def _oldest_log(self) -> PartitionLog | None:
        best, best_ts = None, None
        for log in self._logs.values():
            oldest = log.oldest()
            if oldest is not None and (best_ts is None or oldest.ts < best_ts):
                best, best_ts = log, oldest.ts
        return best

    # -- reading

    def epoch(self, topic: str, partition: int) -> str | None:
        log = self._logs.get((topic, partition))
        return log.epoch if log is not None else None

    def log(self, key: tuple[str, int]) -> PartitionLog | None:
        """The retained log of one partition (read it, do not change it)."""
        return self._logs.get(key)

    def replay(self, since: dict[tuple[str, int], tuple[str, int]],
               patterns: list[tuple[str, str]],
               max_scan: int | None = None) -> tuple[list[Event] | None, str | None]:
        """
        Every retained event after the given positions that matches one of
        C{patterns}, in order per partition (partitions one after the other).

        @param since: C{(topic, partition) -> (epoch, last offset seen)}.
        @param max_scan: retained events and channel runs the replay may
            look at, all partitions together (L{PartitionLog.select}: what
            the index finds after each position, or the scan of what
            follows it when that is less); past it the answer is
            C{(None, TOO_LARGE)}. A recovery for channels that match nothing
            looks at no event (issue 23, H1/H2).
        @return: C{(events, None)}, or C{(None, reason)} when any position
            cannot be recovered from what is retained.
        """
        tails = []
        for key, (epoch, offset) in since.items():
            log = self._logs.get(key)
            if log is None:
                return None, NOT_LOADED if self.loading() else UNKNOWN
            if log.epoch != epoch:
                return None, OTHER_EPOCH
            if offset > log.high:
                return None, AHEAD
            if offset < log.floor:
                return None, TOO_OLD if log.windowed else NOT_LOADED
            tails.append((log, offset))
        patterns = list(dict.fromkeys(patterns))
        left = max_scan
        out: list[Event] = []
        for log, offset in tails:
            events, visits = log.select(offset, patterns, left)
            if events is None:
                return None, TOO_LARGE
            self.replay_visits += visits
            if left is not None:
                left -= visits
            out.extend(events)
        return out, None

    def read(self, topic: str, partition: int, epoch: str, offset: int,
             patterns: Iterable[tuple[str, str]], max_scan: int,
             max_bytes: int) -> tuple[list[Event], int, int, str | None]:
        """
        One slice of a partition's retained events after C{offset} (a slow
        connection's catch-up, L{odin_ws.shard.delivery.catchup}): those
        matching C{patterns}, looking at no more than C{max_scan} events and
        stopping before the matched envelopes pass C{max_bytes} (one is
        always taken).

        @return: C{(events, last, looked, reason)}: the matching events,
            the offset of the last event looked at (the next slice starts
            after it; C{offset} when none was), how many were looked at,
            and None, or why the position cannot be read (L{UNKNOWN},
            L{OTHER_EPOCH}, L{AHEAD}, L{TOO_OLD}).
            C{last == high(topic, partition)} once the slice reached the end.
        """
        log = self._logs.get((topic, partition))
        if log is None:
            return [], offset, 0, UNKNOWN
        if log.epoch != epoch:
            return [], offset, 0, OTHER_EPOCH
        if offset > log.high:
            return [], offset, 0, AHEAD
        if offset < log.floor:
            return [], offset, 0, TOO_OLD
        out, last, looked = log.read(offset, patterns, max_scan, max_bytes)
        self.replay_visits += looked
        return out, last, looked, None

    def high(self, topic: str, partition: int) -> int | None:
        """Offset of the newest retained event of a partition (None: nothing known)."""
        log = self._logs.get((topic, partition))
        return log.high if log is not None else None

    def latest(self, patterns: list[tuple[str, str]], limit: int) -> tuple[list[Event], bool]:
        """
        The latest event of every known channel matching C{patterns} (at most
        C{limit}), and whether more matched (then the events are not all).

        Work: each pattern visits the channels of its own bucket (an exact
        channel: one; C{T.*}: token T's; C{*.E}: type E's; C{*.*}: all) and
        stops once more than C{limit} were found, so one call visits at most
        C{len(patterns) * (2 * limit + 1)} cache entries, whatever the cache
        holds (counted in L{snapshot_visits}).
        """
        latest = self._latest
        found: dict[str, Event] = {}
        visits = 0
        for token, event_type in dict.fromkeys(patterns):
            bucket: Iterable[str]
            if token != WILDCARD and event_type != WILDCARD:
                bucket = (channel_name(token, event_type),)
            elif token != WILDCARD:
                bucket = self._latest_by_token.get(token, ())
            elif event_type != WILDCARD:
                bucket = self._latest_by_type.get(event_type, ())
            else:
                bucket = latest
            for channel in bucket:
                visits += 1
                event = latest.get(channel)
                if event is not None and channel not in found:
                    found[channel] = event
                    if len(found) > limit:
                        break
            if len(found) > limit:
                break
        self.snapshot_visits += visits
        out = sorted(found.values(), key=lambda e: (e.topic, e.partition, e.offset))
        return out[:limit], len(out) > limit


class HistoryCollector:
    """The history's sizes and evictions, read at scrape time (nothing on the hot path)."""

    def __init__(self, history: History, configured_age: Callable[[], float]):
        self._history = history
        self._configured_age = configured_age

    def collect(self) -> Iterator[Metric]:
        h = self._history
        for name, text, value in (
                ("odinws_history_bytes", "Bytes of retained events (envelopes and overhead).",
                 h.bytes),
                ("odinws_history_budget_bytes", "history.max_bytes of this shard.", h.max_bytes),
                ("odinws_history_events", "Retained events.", h.events),
                ("odinws_snapshot_cache_channels", "Channels in the latest-event cache.",
                 h.channels),
                ("odinws_snapshot_cache_bytes", "Bytes the latest-event cache holds beyond "
                 "the history.", h.snapshot_bytes),
                ("odinws_history_configured_age_seconds", "history.max_age of this shard.",
                 self._configured_age())):
            g = GaugeMetricFamily(name, text)
            g.add_metric([], value)
            yield g
        window = h.window()
        g = GaugeMetricFamily("odinws_history_window_seconds",
                              "Age of the oldest retained event of the partition whose "
                              "history is shortest: how far back recovery reaches.")
        g.add_metric([], window if window is not None else 0.0)
        yield g
        c = CounterMetricFamily("odinws_history_evictions", "Events dropped from history, "
                                "by bound: count, age, budget (budget means the window is "
                                "shorter than configured).", labels=["reason"])
        for reason, n in sorted(h.evicted.items()):
            c.add_metric([reason], n)
        yield c
        c = CounterMetricFamily("odinws_history_visits", "Retained events and channel runs "
                                "recoveries looked at (by=recovery), latest-event cache entries "
                                "snapshots looked at (by=snapshot): the work clients' "
                                "recoveries and snapshots cause.", labels=["by"])
        c.add_metric(["recovery"], h.replay_visits)
        c.add_metric(["snapshot"], h.snapshot_visits)
        yield c
