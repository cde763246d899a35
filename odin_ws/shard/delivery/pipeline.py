"""
The shard's delivery path (L{Delivery}): a batch of events, consumed here
or relayed by the hub, is de-duplicated (L{odin_ws.common.highwater}),
remembered (L{odin_ws.shard.history.store}), matched against the subscriptions
and written to every subscriber through the fan-out, each event framed
once (docs/architecture.md, "One event, from Kafka to the socket").
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.logger import Logger

from odin_ws.common import metrics
from odin_ws.common.events import Event
from odin_ws.common.highwater import HighWater
from odin_ws.common.prometheus_internals import Observer
from odin_ws.common.settings import Settings
from odin_ws.shard.delivery.fanout import Fanout
from odin_ws.shard.delivery.frames import text_frame
from odin_ws.shard.delivery.gaps import StaleNotices, count_told
from odin_ws.shard.delivery.ssefeed import Streams
from odin_ws.shard.delivery.subscriptions import SubscriptionIndex
from odin_ws.shard.delivery.variantfeed import VariantFeed
from odin_ws.shard.delivery.warmgate import WarmGate
from odin_ws.shard.history import holes
from odin_ws.shard.history.store import History

#: Sends a batch this shard consumed to the hub (None: no parent to send to).
Relay = Callable[[list[Event]], "Deferred[Any] | None"]


def _never(events: list[Event]) -> bool:
    return False


class Delivery:
    """
    From a batch of events to the subscribers' outboxes.

    A shard of a node of several starts out holding what it consumes (and
    what the warm-up reads back) until it knows the hub's marks
    (L{hold}, L{marks_known}): without them a partition the group hands it
    is re-read from its last commit, and what the node delivered before this
    process existed would reach this shard's clients again as live events.
    Where no mark is known for a partition at all (a node of one shard, a
    whole-node restart), its batches wait for its warm-up (L{gate}).

    @param seen: the shard's de-duplication marks.
    @param relay: hands a batch this shard consumed to the other shards.
    @param variants: the subscriptions with options (None: none are served).
    """

    log = Logger()

    def __init__(self, settings: Settings, subscriptions: SubscriptionIndex, fanout: Fanout,
                 history: History, streams: Streams, seen: HighWater, relay: Relay,
                 variants: VariantFeed | None = None):
        self.subscriptions = subscriptions
        self.variants = variants
        self.fanout = fanout
        self.history = history
        self.streams = streams
        self.seen = seen
        self._relay = relay
        #: Whether a batch re-reads what the warm-up counted as seen (then it
        #: is relayed whole): set by the warm-up's join (L{odin_ws.shard.kafka.backfill}).
        self.rereading: Callable[[list[Event]], bool] = _never
        #: Who was told of events too old to be sent live.
        self.stale = StaleNotices(fanout.stats)
        #: Partitions without a mark wait for their warm-up (odin_ws/shard/delivery/warmgate.py).
        self.gate = WarmGate(seen.marks, self._past, int(time.time() * 1000))
        # Work waiting for the hub's marks (None: nothing is held).
        self._held: list[Callable[[], object]] | None = None
        self.reconfigure(settings)

    def reconfigure(self, settings: Settings) -> None:
        """Take the live C{outbound.max_event_age}."""
        self._max_age = settings.outbound.max_event_age

    @property
    def holding(self) -> bool:
        """Whether consumed batches wait for the hub's marks."""
        return self._held is not None

    def hold(self) -> None:
        """Hold consumed batches and the warm-up's read-back until L{marks_known}."""
        if self._held is None:
            self._held = []

    def marks_known(self, marks: bytes | None) -> None:
        """
        The hub's marks (L{odin_ws.common.highwater.HighWater.exported}; None:
        they could not be had) are counted as seen; then what was held goes
        on, in order.
        """
        if marks:
            try:
                self.seen.adopt(marks)
            except ValueError as e:
                self.log.error("the hub's de-duplication marks are unreadable ({e}): a "
                               "partition re-read from an older commit may reach this "
                               "shard's clients twice", e=e)
        held, self._held = self._held, None
        for work in held or ():
            try:
                work()
            except Exception:   # noqa: BLE001 - what follows it must not stay held
                self.log.failure("held delivery work failed")

    def when_ready(self, work: Callable[[], object]) -> None:
        """Run C{work} now, or once the hub's marks are known (L{hold})."""
        if self._held is None:
            work()
        else:
            self._held.append(work)

    def on_kafka_batch(self, events: list[Event]) -> Deferred[Any] | None:
        """
        A batch this shard consumed: deliver here, relay to the others. While
        held (L{hold}) it is taken once the hub's marks are known.
        """
        if self._held is None:
            return self.gate.admit(events, self._consumed)
        taken: Deferred[Any] = Deferred()
        self._held.append(lambda: maybeDeferred(self.gate.admit, events, self._consumed)
                          .chainDeferred(taken))
        return taken

    def _consumed(self, events: list[Event]) -> Deferred[Any] | None:
        relay = events if self.rereading(events) else None
        events = self.seen.fresh(events)
        if events:
            self.deliver_fresh(events)
        if relay is None:
            relay = events
        if not relay:
            return None
        return self._relay(relay)

    def _past(self, events: list[Event]) -> None:
        """Events of the past (L{WarmGate}): kept for recovery, not sent live."""
        for e in self.seen.fresh(events):
            self.history.add(e)

    def deliver(self, events: list[Event]) -> None:
        """A batch another shard consumed, relayed by the hub."""
        self.gate.admit(events, self._relayed)

    def _relayed(self, events: list[Event]) -> None:
        self.deliver_fresh(self.seen.fresh(events), relayed=True)

    def deliver_fresh(self, events: list[Event], relayed: bool = False) -> None:
        """Deliver C{events}, already de-duplicated, in order."""
        # It flushes the fan-out at its end: no end-of-turn write to schedule.
        self.fanout.hold()
        try:
            self._deliver_fresh(events, relayed)
        finally:
            self.fanout.release()

    def _deliver_fresh(self, events: list[Event], relayed: bool) -> None:
        subscriptions = self.subscriptions
        fanout = self.fanout
        delivered = []
        # Consecutive events reaching the same subscribers (match hands out
        # the same object for the same bucket) go out as one run: framed
        # and joined once, one queue entry per subscriber.
        run: list[tuple[bytes, str, str]] = []
        run_events: list[Event] = []
        run_to: Any = None
        remember = self.history.add
        # Older than outbound.max_event_age: kept for recovery, not sent live.
        max_age = self._max_age
        cutoff = (time.time() - max_age) * 1000.0 if max_age > 0 else -1.0
        stale = 0
        # Subscribers told of holes (undecodable records): counted per run
        # of recipients, one prefix test per event that has subscribers.
        told = 0
        hole = holes.PREFIX
        # SSE streams get their own message of each event, built once
        # (odin_ws/shard/delivery/ssefeed.py); None while no stream is open.
        streams = self.streams.feed()
        notices = self.stale
        # Subscriptions with options (odin_ws/shard/delivery/variantfeed.py):
        # one attribute test per batch while none is held.
        feed = self.variants
        optioned = feed.index if feed is not None and feed.index.active else None
        for e in events:
            remember(e)
            if e.ts < cutoff:
                stale += 1
                subscribers = subscriptions.match(e.token, e.event_type)
                if optioned is not None:
                    subscribers = set(subscribers) | optioned.everyone(e.token, e.event_type)
                if subscribers:
                    if run:     # the notice must not overtake events before it
                        fanout.publish_run(run, run_to, run_events)
                        run, run_events, run_to = [], [], None
                    # (Nor runs kept for the C send loop: Outbox.push_control settles them.)
                    notices.stale(e, subscribers)
                if streams is not None:
                    streams.stale(e)
                continue
            if notices.told:
                notices.fresh(e)
            subscribers = subscriptions.match(e.token, e.event_type)
            held = optioned.match(e.token, e.event_type) if optioned is not None else ()
            if streams is not None and streams.offer(e) and not subscribers and not held:
                delivered.append(e)
                continue
            if held:
                delivered.append(e)
                if run:     # the variants' frames must not overtake events before them
                    fanout.publish_run(run, run_to, run_events)
                    run, run_events, run_to = [], [], None
                feed.offer(e, held)  # type: ignore[union-attr]  # held only with a feed
                if not subscribers:
                    continue
            elif not subscribers:
                continue
            else:
                delivered.append(e)
            if subscribers is not run_to and run:
                fanout.publish_run(run, run_to, run_events)
                run = []
                run_events = []
            run_to = subscribers
            if e.envelope.startswith(hole):
                told += len(subscribers)
            run.append((text_frame(e.envelope), e.channel, e.event_type))
            run_events.append(e)
        if run:
            fanout.publish_run(run, run_to, run_events)
        if stale:
            metrics.EVENTS_STALE.inc(stale)
        if told:
            count_told(fanout.stats, holes.UNDECODABLE, told)
        if streams is not None:
            streams.finish()
        written = fanout.flush()
        if delivered:
            if written:
                _observe_latency(delivered, relayed)
            else:   # a flush window (outbound.flush_delay) is open: measured at its end
                fanout.after_flush(lambda: _observe_latency(delivered, relayed))


#: The latency histograms, observed once per batch (common/prometheus_internals.py).
_END_TO_END = Observer(metrics.DELIVERY_LATENCY)
_OWN = {False: Observer(metrics.OWN_LATENCY_LOCAL), True: Observer(metrics.OWN_LATENCY_RELAYED)}


def _observe_latency(delivered: list[Event], relayed: bool) -> None:
    """
    End to end, and odinws's own share: consumed (by this shard or,
    relayed, by another) to written to the last subscriber's socket.
    Never NaN: each is at least 0.
    """
    now = time.time()
    own = _OWN[relayed]
    if len(delivered) == 1:     # kafka.poll_batch 1: no lists to build
        e = delivered[0]
        _END_TO_END.observe(max(0.0, now - e.ts / 1000.0))
        if e.consumed:
            own.observe(max(0.0, now - e.consumed))
        return
    _END_TO_END.observe_all([max(0.0, now - e.ts / 1000.0) for e in delivered])
    own.observe_all([max(0.0, now - e.consumed) for e in delivered if e.consumed])
