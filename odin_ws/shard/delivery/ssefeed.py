"""
The SSE side of the shard's delivery: each event's Server-Sent Events
message, built once for every stream that gets it, and the position
vector used as its id (docs/protocol.md "Server-Sent Events", "Event ids").
The streams themselves are L{odin_ws.shard.clients.sse.SseStream}.

Frame-once, per transport: streams hold their subscriptions in an index of
their own (L{Streams.index}, the same L{SubscriptionIndex} code), so
matching an event for WebSocket returns WebSocket outboxes only and the
WebSocket loop does no per-connection transport test. The shard asks
L{Streams.feed} once per delivery: C{None} while no stream is open (the
WebSocket path is unchanged but for one C{is None} test per event), else
L{Streams.offer} per event builds the event's SSE message once for every
stream that wants it and hands it to the same L{Fanout}, into each
stream's L{Outbox}: the same queue, limits and slow-client policies as
WebSocket.

Event ids: the shard's position vector after the event (L{Tops}),
computed once per event and only while streams exist.

Measured (cProfile call counts of one delivery of 100 events to 2000 and
to 4000 WebSocket subscribers, before and after this module): with no
stream open, one call more per delivery (L{Streams.feed}), whatever the
number of connections; with a stream open, 8 calls more per event, the
same at 2000 and 4000 WebSocket connections: nothing per connection.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Protocol

from twisted.logger import Logger

from odin_ws.common.events import Event
from odin_ws.common.settings import Settings
from odin_ws.shard.delivery.fanout import Fanout
from odin_ws.shard.delivery.gaps import DROPPED, STALE, StaleNotices, count_told, gap_body
from odin_ws.shard.delivery.outbox import Outbox
from odin_ws.shard.delivery.pingwheel import PingWheel
from odin_ws.shard.delivery.subscriptions import SubscriptionIndex
from odin_ws.shard.delivery.variantfeed import VariantFeed
from odin_ws.shard.delivery.variants import VariantIndex
from odin_ws.shard.history import positions
from odin_ws.shard.history.holes import UNDECODABLE, is_hole

if TYPE_CHECKING:
    from odin_ws.shard.history.store import History


class Stream(Protocol):
    """What the feed needs of one open stream (L{odin_ws.shard.clients.sse.SseStream})."""

    outbox: Outbox | None
    #: Where it waits in the keepalive wheel (L{PingWheel}).
    ping_due: int

    def ping(self) -> None: ...

#: The keepalive comment (C{keepalive.ping_interval}).
PING = b": ping\n\n"


def message(data: bytes, id: str | None = None, event: str | None = None,
            retry: int | None = None) -> bytes:
    """One SSE message carrying C{data} (JSON; any line breaks become data lines)."""
    head = b""
    if event is not None:
        head += b"event: " + event.encode("ascii") + b"\n"
    if retry is not None:
        head += b"retry: %d\n" % retry
    if id:
        head += b"id: " + id.encode("ascii") + b"\n"
    if b"\n" in data or b"\r" in data:
        # An upstream value may be pretty-printed: EventSource joins data
        # lines with "\n", which JSON reads as the whitespace it was.
        lines = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
        return head + b"".join(b"data: " + line + b"\n" for line in lines) + b"\n"
    return head + b"data: " + data + b"\n\n"


class Tops:
    """
    The shard's position vector: per partition the highest offset delivered
    so far (with its epoch), and its text (docs/protocol.md "Event ids"),
    re-encoded only for the topic that changed and only when asked.
    """

    __slots__ = ("_topics", "_groups", "_dirty", "_text")

    def __init__(self, history: History):
        self._topics: dict[str, dict[int, tuple[str, int]]] = {}
        for topic, partition, log in history.partitions():
            self._topics.setdefault(topic, {})[partition] = (log.epoch or "0", log.high)
        self._groups: dict[str, str] = {}
        self._dirty: set[str] = set(self._topics)
        self._text: str | None = None

    def update(self, event: Event) -> None:
        """C{event} was delivered (after every event before it)."""
        topic = event.topic
        parts = self._topics.get(topic)
        if parts is None:
            parts = self._topics[topic] = {}
        parts[event.partition] = (event.epoch or "0", event.offset)
        self._dirty.add(topic)
        self._text = None

    def text(self) -> str:
        """The vector now (C{""} before any event)."""
        text = self._text
        if text is None:
            groups = self._groups
            for topic in self._dirty:
                groups[topic] = positions.encode_group(topic, self._topics[topic])
            self._dirty.clear()
            text = self._text = ";".join(groups[t] for t in sorted(groups))
        return text

    def snapshot(self) -> dict[tuple[str, int], tuple[str, int]]:
        """A copy, as C{(topic, partition) -> (epoch, offset)}."""
        return {(t, p): v for t, parts in self._topics.items() for p, v in parts.items()}


def vector_text(vector: dict[tuple[str, int], tuple[str, int]]) -> str:
    """The text of a vector given as C{(topic, partition) -> (epoch, offset)}."""
    topics: dict[str, dict[int, tuple[str, int]]] = {}
    for (topic, partition), value in vector.items():
        topics.setdefault(topic, {})[partition] = value
    return ";".join(positions.encode_group(t, topics[t]) for t in sorted(topics))


def with_id(msg: bytes, id: str) -> bytes:
    """C{msg} (one SSE message without id) with C{id} set."""
    if not id:
        return msg
    if msg.startswith(b"id: "):
        msg = msg[msg.index(b"\n") + 1:]
    return b"id: " + id.encode("ascii") + b"\n" + msg


class DropNotices:
    """
    What one SSE stream lost past its buffer, told by a C{gap} message
    (docs/protocol.md "Server-Sent Events"). A stream has no catch-up (it
    cannot take another message until it drains, and its ids are position
    vectors), so the events the policy drops are gone from it; the notice
    names each stream lost with the position before its first dropped
    event, and C{since}: a vector from which a new stream recovers
    everything this one dropped (the shard's vector before the first drop,
    each dropped stream held back to before its first dropped event).
    Events it already has come again then; they carry their C{pos}.
    """

    __slots__ = ("_feed", "positions", "_since", "notice")

    def __init__(self, feed: Streams):
        self._feed = feed
        #: Per stream, the position before its first dropped event.
        self.positions: dict[tuple[str, int], tuple[str, int]] = {}
        self._since: dict[tuple[str, int], tuple[str, int]] | None = None
        #: The notice naming everything dropped so far (None: nothing was).
        self.notice: bytes | None = None

    def dropped(self, event: Event) -> bytes:
        """C{event} was dropped: the notice (a new one if it names more)."""
        key = (event.topic, event.partition)
        before = (event.epoch or "0", event.offset - 1)
        since = self._since
        if since is None:
            # The vector may already be past events of this delivery not
            # yet pushed: those that are dropped hold their stream back below.
            tops = self._feed.tops
            since = self._since = tops.snapshot() if tops is not None else {}
            since[key] = before
        if key in self.positions and self.notice is not None:
            return self.notice
        self.positions[key] = before
        held = since.get(key)
        if held is None or held[0] != before[0] or held[1] > before[1]:
            since[key] = before
        body = gap_body(DROPPED, self.positions)
        body["since"] = vector_text(since)
        self.notice = message(json.dumps(body, separators=(",", ":")).encode(), event="gap")
        return self.notice


class Streams:
    """
    The shard's SSE streams: their subscription index, the position vector
    while any is open, the keepalive comments, and the per-delivery hook
    the shard calls (L{feed}, L{offer}, L{finish}).
    """

    log = Logger()

    def __init__(self, reactor: Any, settings: Settings, fanout: Fanout, history: History,
                 websocket: SubscriptionIndex):
        self._reactor = reactor
        self._fanout = fanout
        self._history = history
        #: Subscriptions of streams only (see the module: no per-connection
        #: transport test in the WebSocket loop).
        self.index = SubscriptionIndex(budget=websocket.budget)
        #: Streams with options (max_rate, filter: docs/protocol.md), fed as
        #: the WebSocket ones are, once per event per variant, in SSE messages.
        self.variants = VariantIndex(websocket.budget)
        self.options = VariantFeed(reactor, self.variants, fanout, self._message)
        self.open: set[Stream] = set()
        self.tops: Tops | None = None
        self._run: list[tuple[bytes, str, str]] = []
        #: The events of C{_run}: a stream that drops one names it (L{DropNotices}).
        self._run_events: list[Event] = []
        self._run_to: Any = None
        #: The keepalive comments, each stream on its own due time.
        self.pings = PingWheel(reactor, settings.keepalive.ping_interval, 0.0, answers=False)
        #: Which streams were told of events too old to be sent live.
        self.stale_told = StaleNotices(fanout.stats, self.stale_notice)
        self.reconfigure(settings)

    def reconfigure(self, settings: Settings) -> None:
        """The live C{keepalive.ping_interval}, from each stream's next comment."""
        self.pings.reconfigure(settings.keepalive.ping_interval, 0.0)

    # -- the delivery hook (once per event while streams are open)

    def feed(self) -> Streams | None:
        """Self while a stream is open, else None (the shard's delivery skips SSE)."""
        return self if self.tops is not None else None

    def offer(self, event: Event) -> bool:
        """
        C{event} is being delivered (in the shard's delivery order): advance
        the vector, and queue its SSE message for the streams that want it,
        built once for all of them. True if any does.
        """
        # Called only between feed() (which returned self: tops is set) and finish().
        tops: Tops = self.tops  # type: ignore[assignment]
        tops.update(event)
        if self.stale_told.told:
            self.stale_told.fresh(event)
        subscribers = self.index.match(event.token, event.event_type)
        held = self.variants.match(event.token, event.event_type) if self.variants.active else ()
        if held:
            self.options.offer(event, held)
        if not subscribers:
            return bool(held)
        if subscribers is not self._run_to and self._run:
            self._fanout.publish_run(self._run, self._run_to, self._run_events)
            self._run = []
            self._run_events = []
        self._run_to = subscribers
        # A hole (an undecodable record) is told as a named gap event.
        hole = is_hole(event)
        if hole:
            count_told(self._fanout.stats, UNDECODABLE, len(subscribers))
        self._run.append((message(event.envelope, tops.text(), "gap" if hole else None),
                          event.channel, event.event_type))
        self._run_events.append(event)
        return True

    def stale(self, event: Event) -> None:
        """
        C{event} is too old to be sent live (C{outbound.max_event_age}): the
        streams that want it are told once per stale episode, after the
        messages queued before it. It does not advance the vector: the
        next ids pass it, which the notice's C{since} makes up for.
        """
        subscribers = self.index.match(event.token, event.event_type)
        if not subscribers:
            return
        if self._run:
            self._fanout.publish_run(self._run, self._run_to, self._run_events)
            self._run, self._run_events, self._run_to = [], [], None
        # Runs kept for the C send loop go first (Outbox.push_control
        # settles them): a notice ahead of them lost them (a client opens a
        # new stream from the gap at once).
        self.stale_told.stale(event, subscribers)

    def stale_notice(self, stream: tuple[str, int], before: tuple[str, int]) -> bytes:
        """
        The SSE C{gap} of a stale episode: the stream and the position before
        its first stale event, and C{since}, the vector now with that stream
        held back to it, from which a new stream recovers them.
        """
        tops = self.tops
        since = tops.snapshot() if tops is not None else {}
        held = since.get(stream)
        if held is None or held[0] != before[0] or held[1] > before[1]:
            since[stream] = before
        body = gap_body(STALE, {stream: before})
        body["since"] = vector_text(since)
        return message(json.dumps(body, separators=(",", ":")).encode(), event="gap")

    def _message(self, event: Event) -> bytes:
        """C{event}'s SSE message with the vector as it is now (a throttle may send it later)."""
        return message(event.envelope, self.tops.text() if self.tops is not None else None,
                       "gap" if is_hole(event) else None)

    def finish(self) -> None:
        """The delivery's events are all offered: queue the last run."""
        run, self._run = self._run, []
        events, self._run_events = self._run_events, []
        to, self._run_to = self._run_to, None
        if run:
            self._fanout.publish_run(run, to, events)

    # -- streams

    def opened(self, stream: Stream) -> None:
        if self.tops is None:
            self.tops = Tops(self._history)
        self.open.add(stream)
        self.pings.add(stream)

    def closed(self, stream: Stream) -> None:
        self.open.discard(stream)
        self.pings.discard(stream)
        if stream.outbox is not None:
            self.index.remove_all(stream.outbox)
            if self.variants.remove_all(stream.outbox):
                self.options.prune()
        if not self.open:
            # Nothing to compute per event again until a stream opens (it
            # starts from the history, which saw every event meanwhile).
            self.tops = None
