"""
The arithmetic of C{odinws-loadtest}: latency histograms, per-channel
sequence checks, the completeness check over all connections, and the diff
of the server's C{/metrics}. Pure functions and small classes, no I/O, so
they are tested on their own (C{tests/tools/test_loadtest.py}).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Mapping

from odin_ws.common.channels import PREFIX, WILDCARD

#: Histogram buckets per factor e: about 2% wide, plenty for latencies.
_PER_E = 50
#: Values below this many ms share the first bucket (Kafka timestamps are ms).
_FLOOR_MS = 0.01


def bucket_upper(index: int) -> float:
    """The upper edge (ms) of a bucket."""
    return _FLOOR_MS * math.exp((index + 1) / _PER_E)


class Histogram:
    """
    Log-bucketed counts of millisecond values (about 2% resolution), sparse,
    mergeable by addition, so workers can ship them as plain dicts.
    """

    __slots__ = ("counts", "n", "total", "max")

    def __init__(self, counts: Mapping[int, int] | None = None, n: int = 0,
                 total: float = 0.0, max: float = 0.0):  # noqa: A002 - the statistic's name
        self.counts: dict[int, int] = dict(counts or {})
        self.n = n
        self.total = total
        self.max = max

    def add(self, ms: float) -> None:
        i = int(math.log(ms / _FLOOR_MS) * _PER_E) if ms > _FLOOR_MS else 0
        self.counts[i] = self.counts.get(i, 0) + 1
        self.n += 1
        self.total += ms
        if ms > self.max:
            self.max = ms

    def merge(self, other: Histogram) -> Histogram:
        for i, c in other.counts.items():
            self.counts[i] = self.counts.get(i, 0) + c
        self.n += other.n
        self.total += other.total
        self.max = max(self.max, other.max)
        return self

    def percentile(self, q: float) -> float | None:
        """The value (ms, bucket upper edge, at most the maximum) below which q% fall."""
        if not self.n:
            return None
        rank = max(1, math.ceil(self.n * q / 100.0))
        seen = 0
        for i in sorted(self.counts):
            seen += self.counts[i]
            if seen >= rank:
                return min(bucket_upper(i), self.max)
        return self.max

    def mean(self) -> float | None:
        return self.total / self.n if self.n else None

    def summary(self) -> dict:
        """count, mean, p50, p95, p99, p99.9 and max, in ms."""
        return {"count": self.n, "mean": _r(self.mean()), "p50": _r(self.percentile(50)),
                "p95": _r(self.percentile(95)), "p99": _r(self.percentile(99)),
                "p999": _r(self.percentile(99.9)), "max": _r(self.max if self.n else None)}

    def bins(self, per_decade: int = 10) -> list[tuple[float, float, int]]:
        """Coarser (low ms, high ms, count) bins, log-spaced, for plots."""
        out: dict[int, int] = {}
        for i, c in self.counts.items():
            upper = bucket_upper(i)
            d = math.floor(math.log10(upper) * per_decade - 1e-9)
            out[d] = out.get(d, 0) + c
        return [(10 ** (d / per_decade), 10 ** ((d + 1) / per_decade), out[d])
                for d in sorted(out)]

    def to_wire(self) -> tuple:
        return (self.counts, self.n, self.total, self.max)

    @classmethod
    def from_wire(cls, wire: tuple) -> Histogram:
        return cls(*wire)


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


class SeqCheck:
    """
    Per-channel order check of one connection: events of a channel arrive in
    order, so a C{seq} that skips ahead is a gap (the skipped ones are lost)
    and one at or below the last is a duplicate (or out of order).
    """

    __slots__ = ("last", "gaps", "duplicates")

    def __init__(self):
        self.last: dict[str, int] = {}
        self.gaps = 0
        self.duplicates = 0

    def observe(self, channel: str, seq: int) -> int:
        """Record one event: 0 in order, -1 duplicate, n > 0 events skipped before it."""
        last = self.last.get(channel)
        if last is None:
            self.last[channel] = seq
            return 0
        if seq <= last:
            self.duplicates += 1
            return -1
        self.last[channel] = seq
        skipped = seq - last - 1
        self.gaps += skipped
        return skipped


def matches(pattern: str, channel: str) -> bool:
    """Does the subscription C{pattern} (C{*} segments allowed) cover C{channel}?"""
    if pattern == channel:
        return True
    if not pattern.startswith(PREFIX) or not channel.startswith(PREFIX):
        return False
    p = pattern[len(PREFIX):].split(".")
    c = channel[len(PREFIX):].split(".")
    return len(p) == len(c) == 2 and all(a == WILDCARD or a == b for a, b in zip(p, c))


class Completeness:
    """
    Which events each connection should have received, from everything any
    connection received.

    An event whose Kafka timestamp is later than the moment a client read
    its last C{subscribed} answer was produced after the server held that
    subscription, so the server must deliver it (the clock is the same
    machine's). Every event of a matching channel with C{ts} in
    (subscribed, end] is therefore expected; C{end} is the end of the hold,
    and the clients keep reading for a drain period after it.

    @param events: channel -> {seq: ts} of every distinct event seen.
    @param end_ms: the end of the window (ms since the epoch).
    """

    def __init__(self, events: Mapping[str, Mapping[int, int]], end_ms: float):
        self.end_ms = end_ms
        self._ts = {ch: sorted(seqs.values()) for ch, seqs in events.items()}
        self._channels_of: dict[tuple[str, ...], list[str]] = {}
        self._all_of: dict[tuple[str, ...], list[int]] = {}

    def _channels(self, patterns: tuple[str, ...]) -> list[str]:
        got = self._channels_of.get(patterns)
        if got is None:
            got = [ch for ch in self._ts if any(matches(p, ch) for p in patterns)]
            self._channels_of[patterns] = got
        return got

    def expected(self, patterns: tuple[str, ...], subscribed_ms: float) -> int:
        """Events in (subscribed_ms, end] on channels the patterns cover."""
        channels = self._channels(patterns)
        if len(channels) > 8:
            # Many channels (wildcards): one merged list per pattern set.
            merged = self._all_of.get(patterns)
            if merged is None:
                merged = sorted(t for ch in channels for t in self._ts[ch])
                self._all_of[patterns] = merged
            return _count_between(merged, subscribed_ms, self.end_ms)
        return sum(_count_between(self._ts[ch], subscribed_ms, self.end_ms) for ch in channels)


def _count_between(sorted_ts: list[int], low: float, high: float) -> int:
    """How many values are > low and <= high."""
    return bisect.bisect_right(sorted_ts, high) - bisect.bisect_right(sorted_ts, low)


def missing_everywhere(events: Mapping[str, Iterable[int]]) -> dict[str, int]:
    """Per channel, the seqs between the lowest and highest seen that nobody received."""
    out = {}
    for ch, seqs in events.items():
        seqs = list(seqs)
        if seqs:
            hole = max(seqs) - min(seqs) + 1 - len(set(seqs))
            if hole:
                out[ch] = hole
    return out


def merge_events(into: dict[str, dict[int, int]], part: Mapping[str, Mapping[int, int]]) -> None:
    """Union of channel -> {seq: ts} maps (the first ts seen for a seq wins)."""
    for ch, seqs in part.items():
        mine = into.setdefault(ch, {})
        for seq, ts in seqs.items():
            mine.setdefault(seq, ts)


# Server metrics worth comparing before and after a run: name -> labels kept
# (the others are summed over, e.g. the shard label).
KEY_SERIES: dict[str, tuple[str, ...]] = {
    "odinws_connections": (),
    "odinws_connections_opened_total": (),
    "odinws_connections_closed_total": ("reason",),
    "odinws_rejected_connections_total": ("status", "reason"),
    "odinws_kafka_records_total": (),
    "odinws_events_duplicate_total": (),
    "odinws_events_dropped_total": ("policy",),
    "odinws_hub_relayed_events_total": (),
    "odinws_hub_dropped_batches_total": (),
    "odinws_shard_restarts_total": (),
    "odinws_delivery_latency_seconds_count": (),
    "odinws_delivery_latency_seconds_sum": (),
    "process_cpu_seconds_total": (),
    "process_resident_memory_bytes": (),
}


def key_series(exposition: str) -> dict[str, float]:
    """The L{KEY_SERIES} of a Prometheus text exposition, as C{name{labels}} -> value."""
    from prometheus_client.parser import text_string_to_metric_families
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            keep = KEY_SERIES.get(sample.name)
            if keep is None:
                continue
            labels = ",".join(f'{k}="{sample.labels[k]}"' for k in keep if k in sample.labels)
            key = f"{sample.name}{{{labels}}}" if labels else sample.name
            out[key] = out.get(key, 0.0) + sample.value
    return out


def diff_series(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, dict]:
    """name -> {before, after, delta} for every series in either."""
    return {k: {"before": before.get(k), "after": after.get(k),
                "delta": (after.get(k, 0.0) - before.get(k, 0.0))}
            for k in sorted(set(before) | set(after))}


def evaluate(finals: list[dict], patterns_of, hold_end_ms: float) -> dict:
    """
    The completeness check over the workers' final summaries: per connection,
    expected events (L{Completeness}) against those it received in the window.

    @param patterns_of: connection index -> its subscription patterns.
    """
    events: dict[str, dict[int, int]] = {}
    gaps: dict[str, int] = {}
    dups: dict[str, int] = {}
    for f in finals:
        merge_events(events, f["seen"])
        for into, part in ((gaps, f["gaps"]), (dups, f["duplicates"])):
            for ch, n in part.items():
                into[ch] = into.get(ch, 0) + n
    check = Completeness(events, hold_end_ms)
    expected = received = short = 0
    missing_by_conn: list[tuple[int, int]] = []
    for f in finals:
        for g, t_sub_ms, in_window, _events, _gaps, _dups in f["conns"]:
            want = check.expected(patterns_of(g), t_sub_ms)
            expected += want
            received += min(in_window, want)
            if in_window < want:
                short += 1
                missing_by_conn.append((want - in_window, g))
    nobody = missing_everywhere(events)
    worst = sorted(set(gaps) | set(dups), key=lambda ch: -(gaps.get(ch, 0) + dups.get(ch, 0)))
    return {"checked_connections": sum(len(f["conns"]) for f in finals),
            "distinct_events": sum(len(s) for s in events.values()),
            "channels": len(events),
            "expected": expected, "received": received, "missing": expected - received,
            "connections_missing_events": short,
            "worst_connections": [{"connection": g, "missing": n}
                                  for n, g in sorted(missing_by_conn, reverse=True)[:10]],
            "gaps": sum(gaps.values()), "duplicates": sum(dups.values()),
            "missing_everywhere": sum(nobody.values()),
            "worst_channels": [{"channel": ch, "gaps": gaps.get(ch, 0),
                                "duplicates": dups.get(ch, 0)} for ch in worst[:10]]}
