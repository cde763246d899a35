"""
Delivery to the variant streams (L{odin_ws.shard.delivery.variants}): an
event of a channel some subscription with options holds goes, per variant
that holds it, through the variant's filter, its throttle and its delta,
each computed once for all the connections of the variant:

  - the filter once per event per distinct filter (C{filter_key});
  - the throttle once per (channel, filter, rate): a trailing-edge
    throttle (L{odin_ws.shard.delivery.throttle}) that lets at most
    C{max_rate} events a second through and always ends on the latest;
  - the delta once per (channel, variant): a JSON Merge Patch
    (L{odin_ws.shard.delivery.mergepatch}) of the event's data against the
    previous event of that stream, framed once, in the event's envelope
    (C{"merge-patch"}) or in a compact frame without one (C{"compact"},
    L{odin_ws.shard.delivery.compactdelta}: a stream id per channel, the
    position and time as differences).

Why the delta needs per-connection bookkeeping at all: a connection may get
a delta only if it got the previous event of the stream, in this shape.
Each stream keeps the set of connections that did (C{synced}), rebuilt per
event: a connection whose frame took the Outbox's fast path (room for it,
so queued as is, in order) stays; anything else (no room: dropped,
conflated, caught up from history later, or behind; a new subscriber) gets
the whole event, and the next one whole as well unless that one was queued
as is. A whole event is always right, so the rule errs only toward bytes.
Which path a frame takes is decided from the Outbox's room before it is
published, so the runs the C send loop keeps are sent first
(L{Fanout.settle}): then the room read is the room the frame meets. Both
frames go through the fan-out, compressed once per event like any other
(L{odin_ws.shard.delivery.deflate}).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from typing import Any

from odin_ws.common import metrics
from odin_ws.common.events import Event
from odin_ws.shard.delivery import compactdelta, mergepatch
from odin_ws.shard.delivery.fanout import Fanout
from odin_ws.shard.delivery.frames import text_frame
from odin_ws.shard.delivery.gaps import count_told
from odin_ws.shard.delivery.throttle import Throttle
from odin_ws.shard.delivery.variants import COMPACT, Variant, VariantIndex
from odin_ws.shard.history.holes import UNDECODABLE, is_hole

_HEAD = b'{"type":"event","channel":"'
_DATA = b'","data":'
_DELTA = b'","delta":'
_TS = b',"ts":'
#: Data that could not be read from an envelope (passes no filter, no delta).
_UNREAD = object()


def event_data(event: Event) -> object:
    """The decoded C{data} of C{event}'s envelope (L{odin_ws.common.events.Event.build})."""
    envelope = event.envelope
    start = len(_HEAD) + len(event.channel) + len(_DATA)
    end = envelope.rfind(_TS)
    if end < start:
        return _UNREAD
    try:
        return json.loads(envelope[start:end])
    except ValueError:
        return _UNREAD


def delta_envelope(event: Event, patch: dict[str, Any]) -> bytes:
    """C{event}'s envelope with C{"delta":<patch>} in place of C{"data":...}."""
    envelope = event.envelope
    return b"".join((_HEAD, event.channel.encode("ascii"), _DELTA,
                     json.dumps(patch, separators=(",", ":"), ensure_ascii=True,
                                allow_nan=False).encode("ascii"),
                     envelope[envelope.rfind(_TS):]))


class _DeltaStream:
    """
    The delta state of one (channel, variant): the last event sent (its
    data, and for compact deltas its time and place), who got it as is.
    """

    __slots__ = ("last", "synced", "sid", "ts", "where", "offset")

    def __init__(self, sid: int = 0) -> None:
        self.last: object = _UNREAD
        self.synced: dict[Any, None] = {}
        #: The stream id of compact deltas (0: merge-patch deltas).
        self.sid = sid
        self.ts = 0
        #: The last event's (topic, partition, epoch): a compact delta's
        #: C{dpos} counts offsets within one of them only.
        self.where: tuple[str, int, str] | None = None
        self.offset = 0

    def frames(self, event: Event, data: object) -> tuple[bytes, bytes | None]:
        """
        C{event}'s whole frame for this stream's subscribers, and its delta
        frame against the last event (None: none can say it, or it would
        not be smaller); the event becomes the last.
        """
        where = (event.topic, event.partition, event.epoch)
        delta = None
        if self.sid:
            whole = text_frame(compactdelta.whole_payload(event.envelope, self.sid))
            if self.synced and where == self.where:
                change = compactdelta.diff(self.last, data)
                if change is not None:
                    delta = text_frame(compactdelta.frame_payload(
                        self.sid, event.offset - self.offset, event.ts - self.ts, *change))
            self.ts, self.where, self.offset = event.ts, where, event.offset
        else:
            whole = text_frame(event.envelope)
            if self.synced:
                patch = mergepatch.diff(self.last, data)
                if patch is not None:
                    delta = text_frame(delta_envelope(event, patch))
        self.last = data
        if delta is not None and len(delta) >= len(whole):
            delta = None
        return whole, delta


class VariantFeed:
    """
    The shard's variant streams: L{offer} an event with the variants that
    hold its channel (L{VariantIndex.match}); the frames go into the
    subscribers' Outboxes through the shard's L{Fanout}, written with the
    rest of the batch (or, for a throttle's trailing edge, right away).
    """

    def __init__(self, clock: Any, index: VariantIndex, fanout: Fanout,
                 frame: Callable[[Event], bytes] | None = None):
        self.clock = clock
        self.index = index
        self.fanout = fanout
        #: An event's whole message in the subscribers' transport (default:
        #: a WebSocket text frame of its envelope; SSE streams build theirs).
        self.frame: Callable[[Event], bytes] = frame or (lambda e: text_frame(e.envelope))
        #: Per variant with deltas, per channel, its delta state.
        self._deltas: dict[Variant, dict[str, _DeltaStream]] = {}
        #: Compact deltas' stream ids: per channel, one for every variant
        #: (a connection holds a channel with one variant), never reused.
        self._sids: dict[str, int] = {}
        self._next_sid = itertools.count(1)
        #: (channel, filter key, rate) -> its throttle.
        self._throttles: dict[tuple[str, str, float], Throttle[Event]] = {}
        #: Inside a delivery batch: its caller writes the Outboxes.
        self._in_batch = False
        #: The last event decoded, and its data (a throttle's emit reads it again).
        self._decoded: tuple[Event | None, object] = (None, _UNREAD)

    # -- per event

    def offer(self, event: Event, variants: Any) -> None:
        """C{event} for the C{variants} that hold its channel (in a delivery batch)."""
        if is_hole(event):
            self._tell_hole(event, variants)
            return
        self._in_batch = True
        try:
            verdicts: dict[str, bool] = {}
            rated: dict[tuple[str, float], None] = {}
            for variant in variants:
                if variant.filter is not None:
                    passed = verdicts.get(variant.filter_key)
                    if passed is None:
                        passed = verdicts[variant.filter_key] = variant.filter.matches(
                            self._data(event))
                        if not passed:
                            metrics.EVENTS_FILTERED.inc()
                    if not passed:
                        continue
                if variant.max_rate:
                    rated[(variant.filter_key, variant.max_rate)] = None
                else:
                    self._send(event, variant)
            for filter_key, rate in rated:
                self._throttle(event, filter_key, rate)
        finally:
            self._in_batch = False

    def _tell_hole(self, event: Event, variants: Any) -> None:
        """
        A record of the channel could not be decoded: its C{gap} message
        (L{odin_ws.shard.history.holes}) goes to every variant as it is, past
        filters, rates and deltas (it has no data for them; a delta after
        it is still against the last data the client got).
        """
        frame = self.frame(event)   # the transport's: SSE names it a gap
        told = 0
        for variant in variants:
            subscribers: Any = self.index.subscribers(variant, event.token, event.event_type)
            if subscribers:
                told += len(subscribers)
                self.fanout.publish(frame, event.channel, event.event_type, subscribers, event)
        count_told(self.fanout.stats, UNDECODABLE, told)

    def _data(self, event: Event) -> object:
        seen, data = self._decoded
        if seen is not event:
            data = event_data(event)
            self._decoded = (event, data)
        return data

    def _throttle(self, event: Event, filter_key: str, rate: float) -> None:
        key = (event.channel, filter_key, rate)
        throttle = self._throttles.get(key)
        if throttle is None:
            throttle = self._throttles[key] = Throttle(
                self.clock, 1.0 / rate, lambda e: self._released(key, e))
        if throttle.pending:
            metrics.EVENTS_THROTTLED.inc()    # the one held back gives way to this one
        throttle.offer(event)

    def _released(self, key: tuple[str, str, float], event: Event) -> None:
        """A throttle lets C{event} through: to every variant of its filter and rate."""
        _, filter_key, rate = key
        for variant in list(self.index.match(event.token, event.event_type)):
            if variant.filter_key == filter_key and variant.max_rate == rate:
                self._send(event, variant)
        if not self._in_batch:
            self.fanout.flush()

    def _send(self, event: Event, variant: Variant) -> None:
        # The subscribers of the variants are Outboxes.
        subscribers: Any = self.index.subscribers(variant, event.token, event.event_type)
        if not subscribers:
            return
        channel = event.channel
        if not variant.delta:
            self.fanout.publish(self.frame(event), channel, event.event_type, subscribers, event)
            return
        streams = self._deltas.get(variant)
        if streams is None:
            streams = self._deltas[variant] = {}
        stream = streams.get(channel)
        if stream is None:
            stream = streams[channel] = _DeltaStream(
                self._sid(channel) if variant.delta == COMPACT else 0)
        whole, delta = stream.frames(event, self._data(event))
        synced = stream.synced
        # No run kept for the C loop before these: room is what each Outbox
        # will have when its frame reaches it (the two runs below go to
        # distinct connections).
        self.fanout.settle()
        now_synced: dict[Any, None] = {}
        whole_size = len(whole)
        delta_size = len(delta) if delta is not None else 0
        to_delta: list[Any] = []
        to_whole: list[Any] = []
        event_type = event.event_type
        for box in subscribers:
            if delta is not None and box in synced and delta_size <= box.room:
                to_delta.append(box)
                now_synced[box] = None
            elif whole_size <= box.room:
                to_whole.append(box)
                now_synced[box] = None
            else:
                # The slow path: its policy may drop, conflate or note it.
                box.overflow(whole, channel, event_type, whole_size, event)
        deltas = len(to_delta)
        wholes = len(subscribers) - deltas
        # Through the fan-out: framed (and compressed) once for each group.
        if to_delta:
            self.fanout.publish(delta, channel, event_type, to_delta, event)  # type: ignore[arg-type]
        if to_whole:
            self.fanout.publish(whole, channel, event_type, to_whole, event)
        stream.synced = now_synced
        metrics.DELTA_FRAMES.labels(kind="delta").inc(deltas)
        metrics.DELTA_FRAMES.labels(kind="whole").inc(wholes)
        metrics.DELTA_BYTES.labels(stage="before").inc(whole_size * (deltas + wholes))
        metrics.DELTA_BYTES.labels(stage="after").inc(whole_size * wholes + delta_size * deltas)

    def _sid(self, channel: str) -> int:
        sid = self._sids.get(channel)
        if sid is None:
            sid = self._sids[channel] = next(self._next_sid)
        return sid

    # -- subscriptions changing

    def unsynced(self, subscriber: Any, variant: Variant) -> None:
        """
        C{subscriber} took or left a pattern of C{variant}: its next event
        of every channel of the variant goes whole.
        """
        for stream in self._deltas.get(variant, {}).values():
            stream.synced.pop(subscriber, None)

    def prune(self) -> None:
        """Forget the streams of variants nobody holds any more (their throttles stop)."""
        live = set(self.index.variants())
        for variant in [v for v in self._deltas if v not in live]:
            del self._deltas[variant]
        held = {c for v, streams in self._deltas.items() if v.delta == COMPACT for c in streams}
        for channel in [c for c in self._sids if c not in held]:
            del self._sids[channel]
        rates = {(v.filter_key, v.max_rate) for v in live if v.max_rate}
        for key in [k for k in self._throttles if (k[1], k[2]) not in rates]:
            self._throttles.pop(key).stop()

    def stop(self) -> None:
        """The shard stops: no throttle timer outlives it."""
        for throttle in self._throttles.values():
            throttle.stop()
        self._throttles.clear()
