"""
Tests for L{odin_ws.shard.delivery.variantfeed} through the shard's delivery
path (L{Delivery}): deltas that rebuild every event exactly, computed once
per event and variant; whole events where a delta would be wrong; filters
evaluated once per event per filter; throttles ending on the latest event.
Real Outboxes on StringTransports, a Clock for the throttles' timers.
"""

from __future__ import annotations

import json
import time
from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from odin_ws.common import config as configmod
from odin_ws.common.events import Event
from odin_ws.common.highwater import HighWater
from odin_ws.common.settings import Settings
from odin_ws.shard.delivery import mergepatch, variantfeed
from odin_ws.shard.delivery.fanout import Fanout
from odin_ws.shard.delivery.filters import FilterPool
from odin_ws.shard.delivery.outbox import Outbox
from odin_ws.shard.delivery.pipeline import Delivery
from odin_ws.shard.delivery.ssefeed import Streams
from odin_ws.shard.delivery.subscriptions import SubscriptionIndex
from odin_ws.shard.delivery.variantfeed import VariantFeed, delta_envelope, event_data
from odin_ws.shard.delivery.variants import COMPACT, MERGE_PATCH, Variant, VariantIndex
from odin_ws.shard.delivery.writestats import WriteStats
from odin_ws.shard.history.store import History
from odinws_client import compactdelta as compactdelta_client
from odinws_client.mergepatch import apply_merge_patch
from tests.helpers import CountingTransport, FakeProtocol, SendLoop, parse_frames, policies


def make_event(n: int, data: Any, token: str = "ABC", event_type: str = "price") -> Event:
    # Now: older events are stale (outbound.max_event_age), not sent live.
    return Event.build(token, event_type, json.dumps(data).encode(), int(time.time() * 1000) + n,
                       topic="prices", partition=0, offset=n)


def received(box: Outbox) -> list[dict[str, Any]]:
    """The JSON messages an Outbox's transport got."""
    return [json.loads(p) for _, p in parse_frames(box.transport.value())]


def rebuild(messages: list[dict[str, Any]]) -> list[Any]:
    """What a client applying deltas sees: the data of every event, in order."""
    last: dict[str, Any] = {}
    out = []
    for m in messages:
        if m.get("type") != "event":
            continue
        if "delta" in m:
            data = apply_merge_patch(last[m["channel"]], m["delta"])
        else:
            data = m["data"]
        last[m["channel"]] = data
        out.append(data)
    return out


class FeedCase(SendLoop, SynchronousTestCase):
    def setUp(self) -> None:
        settings = Settings.from_config(configmod.load(None, environ={}))
        self.clock = Clock()
        self.fanout = Fanout(self.clock, WriteStats(), native=self.send_loop())
        self.plain = SubscriptionIndex()
        self.index = VariantIndex(self.plain.budget)
        self.feed = VariantFeed(self.clock, self.index, self.fanout)
        history = History(max_events=1000, max_age=0, max_bytes=1 << 24, max_channels=100,
                          clock=lambda: 0.0)
        streams = Streams(self.clock, settings, self.fanout, history, SubscriptionIndex())
        self.delivery = Delivery(settings, self.plain, self.fanout, history, streams,
                                 HighWater("test"), lambda events: None, self.feed)
        self.pool = FilterPool(100)

    def outbox(self, limit: int = 1 << 20) -> Outbox:
        return Outbox(FakeProtocol(CountingTransport()), self.fanout, policies(), limit, 5.0,
                      lambda: None)

    def subscribe(self, variant: Variant, pattern: tuple[str, str] = ("ABC", "price"),
                  box: Outbox | None = None) -> Outbox:
        box = box if box is not None else self.outbox()
        self.index.add_all(box, [pattern], variant)
        self.feed.unsynced(box, variant)
        return box

    def deliver(self, *events: Event) -> None:
        self.delivery.deliver_fresh(list(events))


class DeltaTests(FeedCase):
    def test_deltas_rebuild_every_event_exactly(self):
        """A delta subscriber rebuilds exactly the data a plain subscriber gets whole."""
        delta = self.subscribe(Variant(delta=MERGE_PATCH))
        whole = self.outbox()
        self.plain.add(whole, "ABC", "price")
        datas = [{"price": "1.00", "size": i % 3, "book": {"bid": i, "ask": i + 1},
                  "gone": "x"} if i % 4 else {"price": f"{i}.5", "size": 0, "book": {"bid": i}}
                 for i in range(20)]
        for i, data in enumerate(datas):
            self.deliver(make_event(i, data))
        got = received(delta)
        self.assertEqual(rebuild(got), datas)
        self.assertEqual([m["data"] for m in received(whole)], datas)
        self.assertIn("data", got[0])
        self.assertGreater(sum("delta" in m for m in got), 10)
        # Positions and timestamps are the events' own, delta or not.
        self.assertEqual([m["pos"] for m in got], [m["pos"] for m in received(whole)])
        self.assertEqual([m["ts"] for m in got], [m["ts"] for m in received(whole)])

    def test_patch_computed_once_per_event_for_every_connection(self):
        """Three connections of one variant get the same delta frame; the patch is made once."""
        boxes = [self.subscribe(Variant(delta=MERGE_PATCH)) for _ in range(3)]
        calls = []
        original = mergepatch.diff
        self.patch(variantfeed.mergepatch, "diff",
                   lambda old, new: calls.append(1) or original(old, new))
        for i in range(5):
            self.deliver(make_event(i, {"price": i, "name": "token name that stays"}))
        self.assertEqual(len(calls), 4)     # the first event has nothing to diff against
        values = {box.transport.value() for box in boxes}
        self.assertEqual(len(values), 1)

    def test_a_late_subscriber_gets_a_whole_event_first(self):
        """A connection that subscribes mid-stream gets its first event whole, then deltas."""
        early = self.subscribe(Variant(delta=MERGE_PATCH))
        for i in range(3):
            self.deliver(make_event(i, {"price": i, "name": "n"}))
        late = self.subscribe(Variant(delta=MERGE_PATCH))
        for i in range(3, 6):
            self.deliver(make_event(i, {"price": i, "name": "n"}))
        kinds = ["delta" if "delta" in m else "data" for m in received(late)]
        self.assertEqual(kinds, ["data", "delta", "delta"])
        self.assertEqual(rebuild(received(late)), [{"price": i, "name": "n"} for i in (3, 4, 5)])
        self.assertEqual(rebuild(received(early)), [{"price": i, "name": "n"} for i in range(6)])

    def test_what_a_patch_cannot_say_goes_whole(self):
        """A null member or non-object data is sent whole, and the next event is a delta again."""
        box = self.subscribe(Variant(delta=MERGE_PATCH))
        datas = [{"a": 1, "b": "long enough text"}, {"a": None, "b": "long enough text"},
                 [1, 2], {"a": 2, "b": "long enough text"}, {"a": 3, "b": "long enough text"}]
        for i, data in enumerate(datas):
            self.deliver(make_event(i, data))
        got = received(box)
        self.assertEqual(["delta" in m for m in got], [False, False, False, False, True])
        self.assertEqual(rebuild(got), datas)

    def test_after_a_dropped_event_the_next_goes_whole(self):
        """A connection whose buffer refused an event gets the following one whole."""
        box = self.subscribe(Variant(delta=MERGE_PATCH), box=self.outbox(limit=400))
        box.transport.write = lambda data: None      # nothing drains: the buffer fills
        box.pauseProducing()
        name = "x" * 150
        for i in range(4):
            self.deliver(make_event(i, {"price": i, "name": name}))
        stream = self.feed._deltas[Variant(delta=MERGE_PATCH)]["odin.token.ABC.price"]
        self.assertNotIn(box, stream.synced)

    def test_delta_envelope(self):
        """A delta envelope is the event's with "delta" in place of "data", nothing else changed."""
        e = make_event(7, {"a": 1, "b": {"c": 2}})
        self.assertEqual(event_data(e), {"a": 1, "b": {"c": 2}})
        doc = json.loads(delta_envelope(e, {"a": 2}))
        whole = json.loads(e.envelope)
        del whole["data"]
        self.assertEqual(doc.pop("delta"), {"a": 2})
        self.assertEqual(doc, whole)


class NativeDeltaTests(DeltaTests):
    native = True


def rebuild_compact(messages: list[Any]) -> list[dict[str, Any]]:
    """
    What a client of compact deltas sees: every event as a whole one
    (channel, data, ts, pos), rebuilt from its stream's previous event.
    """
    streams: dict[int, dict[str, Any]] = {}
    out = []
    for m in messages:
        if type(m) is list:
            rebuilt = compactdelta_client.rebuild(streams[m[0]], m)
            event = {k: rebuilt[k] for k in ("channel", "data", "ts", "pos")}
            streams[m[0]] = event
        elif m.get("type") == "event":
            event = {k: m[k] for k in ("channel", "data", "ts", "pos")}
            if "sid" in m:
                streams[m["sid"]] = event
        else:
            continue
        out.append(event)
    return out


def whole_events(box: Outbox) -> list[dict[str, Any]]:
    """The events a plain subscriber got, as L{rebuild_compact} gives them."""
    return [{k: m[k] for k in ("channel", "data", "ts", "pos")} for m in received(box)
            if m.get("type") == "event"]


class CompactDeltaTests(FeedCase):
    def test_compact_deltas_rebuild_every_event_exactly(self):
        """
        A compact delta subscriber of two channels rebuilds exactly what a
        plain subscriber gets: channel, data, ts and pos of every event;
        most events come as compact frames, integers as increments.
        """
        compact = self.subscribe(Variant(delta=COMPACT), ("ABC", "*"))
        whole = self.outbox()
        self.plain.add(whole, "ABC", "*")
        events = []
        for i in range(30):
            kind = "price" if i % 3 else "liquidity"
            data = {"token": "ABC", "price": 1.5 + i / 1000, "bid": 1.49, "ts": 1000 + 7 * i,
                    "seq": i // 2, "venue": "same venue text"}
            if i == 12:
                data["seq"] = 2 ** 60             # beyond every reader's exact integers
            events.append(make_event(2 * i, data, event_type=kind))
        for event in events:
            self.deliver(event)
        got = received(compact)
        self.assertEqual(rebuild_compact(got), whole_events(whole))
        compacts = [m for m in got if type(m) is list]
        self.assertGreater(len(compacts), 20)
        # The data's millisecond clock always as an increment; an integer no
        # reader holds exactly as itself, in the patch.
        self.assertTrue(all(len(m) == 5 and "ts" in m[4] for m in compacts), compacts)
        self.assertIn(2 ** 60, [m[3].get("seq") for m in compacts])
        wholes = [m for m in got if type(m) is dict]
        self.assertEqual({m["channel"] for m in wholes},
                         {"odin.token.ABC.price", "odin.token.ABC.liquidity"})
        self.assertEqual(len({m["sid"] for m in wholes}), 2)
        self.assertLess(len(compact.transport.value()), len(whole.transport.value()) / 2)

    def test_another_partition_goes_whole(self):
        """An event of another partition (or epoch) than the previous one goes whole."""
        box = self.subscribe(Variant(delta=COMPACT))
        data = {"price": 1, "name": "a long enough name"}
        first = make_event(1, data)
        moved = Event.build("ABC", "price", json.dumps({**data, "price": 2}).encode(),
                            first.ts + 1, topic="prices", partition=3, offset=9)
        after = Event.build("ABC", "price", json.dumps({**data, "price": 3}).encode(),
                            first.ts + 2, topic="prices", partition=3, offset=12)
        for event in (first, moved, after):
            self.deliver(event)
        got = received(box)
        self.assertEqual([type(m) for m in got], [dict, dict, list])
        self.assertEqual(got[2][:3], [got[0]["sid"], 3, 1])
        self.assertEqual(rebuild_compact(got)[2]["pos"], "prices:3:0:12")

    def test_a_late_subscriber_starts_whole_with_the_sid(self):
        """A connection subscribing mid-stream gets a whole event naming the stream id first."""
        early = self.subscribe(Variant(delta=COMPACT))
        for i in range(3):
            self.deliver(make_event(i, {"price": i, "name": "n" * 20}))
        late = self.subscribe(Variant(delta=COMPACT))
        for i in range(3, 6):
            self.deliver(make_event(i, {"price": i, "name": "n" * 20}))
        got = received(late)
        self.assertEqual([type(m) for m in got], [dict, list, list])
        self.assertEqual(got[0]["sid"], received(early)[0]["sid"])
        self.assertEqual([e["data"]["price"] for e in rebuild_compact(got)], [3, 4, 5])


class NativeCompactDeltaTests(CompactDeltaTests):
    native = True


class FilterTests(FeedCase):
    def test_only_matching_events_evaluated_once_per_filter(self):
        """Subscribers of one filter get exactly the matching events; it runs once per event."""
        event_filter = self.pool.acquire({"size": {"gte": 100}})
        calls = []
        original = event_filter._match
        event_filter._match = lambda data: calls.append(1) or original(data)
        variant = Variant(filter_key=event_filter.key, filter=event_filter)
        boxes = [self.subscribe(variant) for _ in range(4)]
        deltas = self.subscribe(Variant(delta=MERGE_PATCH, filter_key=event_filter.key,
                                        filter=event_filter))
        sizes = [5, 150, 99, 100, 1000, 0]
        for i, size in enumerate(sizes):
            self.deliver(make_event(i, {"size": size, "side": "buy"}))
        want = [{"size": s, "side": "buy"} for s in sizes if s >= 100]
        for box in boxes:
            self.assertEqual([m["data"] for m in received(box)], want)
        self.assertEqual(rebuild(received(deltas)), want)
        self.assertEqual(len(calls), len(sizes))


class ThrottleTests(FeedCase):
    def test_max_rate_ends_on_the_latest_event(self):
        """max_rate 2 on 50 events a second: at most 3 a second, the last one the latest."""
        box = self.subscribe(Variant(max_rate=2.0))
        for i in range(100):                    # two seconds at 50 a second
            self.deliver(make_event(i, {"price": i}))
            self.clock.advance(0.02)
        self.clock.advance(1.0)                 # the trailing edge
        prices = [m["data"]["price"] for m in received(box)]
        self.assertLessEqual(len(prices), 2 * 2 + 2)
        self.assertGreaterEqual(len(prices), 4)
        self.assertEqual(prices[-1], 99)
        self.assertEqual(prices, sorted(prices))

    def test_throttle_and_delta_together(self):
        """A throttled delta stream rebuilds the events it lets through exactly."""
        box = self.subscribe(Variant(delta=MERGE_PATCH, max_rate=5.0))
        for i in range(40):
            self.deliver(make_event(i, {"price": i, "name": "same name"}))
            self.clock.advance(0.05)
        self.clock.advance(1.0)
        got = received(box)
        datas = rebuild(got)
        self.assertEqual(datas[-1], {"price": 39, "name": "same name"})
        self.assertTrue(any("delta" in m for m in got))
        self.assertEqual([d["price"] for d in datas], sorted(d["price"] for d in datas))

    def test_stop_cancels_trailing_timers(self):
        """Stopping the feed leaves no throttle timer behind."""
        self.subscribe(Variant(max_rate=1.0))
        for i in range(3):
            self.deliver(make_event(i, {"price": i}))
        self.feed.stop()
        self.assertEqual([c for c in self.clock.getDelayedCalls() if c.active()], [])
