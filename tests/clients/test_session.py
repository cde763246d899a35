"""
The protocol core of the Python client (odinws_client.session), fed the
server's messages by hand: what it sends, what each subscription yields.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from odinws_client.messages import Event, Gap, ServerError, SubscriptionFailed
from odinws_client.session import Session
from odinws_client.subscription import State, Subscription

T = "odin.trades"


def pos(partition: int, offset: int, epoch: str = "ep1") -> str:
    return f"{T}:{partition}:{epoch}:{offset}"


def event(channel: str, partition: int, offset: int, **extra: Any) -> dict[str, Any]:
    return {"type": "event", "channel": channel, "data": {"o": offset}, "ts": 1,
            "pos": pos(partition, offset), **extra}


class FakeHooks:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.delayed: list[tuple[float, Callable[[], None]]] = []
        self.tokens: list[tuple[str, float | None]] = []
        self.errors: list[ServerError] = []

    def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)

    def later(self, delay: float, call: Callable[[], None]) -> None:
        self.delayed.append((delay, call))

    def refreshed(self, token: str, expires: float | None) -> None:
        self.tokens.append((token, expires))

    def error(self, error: ServerError) -> None:
        self.errors.append(error)

    def take(self) -> list[dict[str, Any]]:
        sent, self.sent = self.sent, []
        return sent


def got(sub: Subscription) -> list[object]:
    """What the iterator has queued: offsets of events ("s7" for snapshots), Gap reasons."""
    out: list[object] = []
    while not sub._items.empty():
        item = sub._items.get_nowait()
        if isinstance(item, Event):
            out.append(f"s{item.data['o']}" if item.snapshot else item.data["o"])
        elif isinstance(item, Gap):
            out.append(("gap", item.reason))
        else:
            out.append(("end", item.error))
    return out


class SessionCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.hooks = FakeHooks()
        self.session = Session(self.hooks, max_channels_per_message=100)

    def subscribe(self, pattern: str, **options: Any) -> Subscription:
        options.setdefault("snapshot", False)
        options.setdefault("recover", True)
        options.setdefault("since", None)
        sub = Subscription(pattern, remove=self.session.remove, **options)
        self.session.add(sub)
        return sub

    def ack(self, request: dict[str, Any], **fields: Any) -> None:
        self.session.received({"type": "subscribed", "channels": request["channels"],
                               "id": request["id"], **fields})

    def reconnect(self) -> list[dict[str, Any]]:
        self.session.lost()
        self.session.opened()
        return self.hooks.take()


class SubscribeTests(SessionCase):
    def test_first_subscribe_asks_for_current_positions(self):
        """since: [] on a first subscribe; none with recover=False; snapshot in the same message."""
        self.subscribe("odin.token.A.trade")
        self.subscribe("odin.token.B.trade", recover=False)
        self.subscribe("odin.token.C.trade", snapshot=True)
        self.session.opened()
        sent = [{k: v for k, v in m.items() if k != "id"} for m in self.hooks.take()]
        self.assertEqual(sent, [
            {"type": "subscribe", "channels": ["odin.token.A.trade"], "since": []},
            {"type": "subscribe", "channels": ["odin.token.B.trade"]},
            {"type": "subscribe", "channels": ["odin.token.C.trade"], "since": [],
             "snapshot": True}])

    def test_split_at_max_channels(self):
        """A resubscription of many patterns is split at max_channels_per_message."""
        self.session = Session(self.hooks, max_channels_per_message=2)
        for name in "ABCDE":
            sub = Subscription(f"odin.token.{name}.trade", snapshot=False, recover=False,
                               since=None, remove=self.session.remove)
            self.session.add(sub)
        self.session.opened()
        self.assertEqual([len(m["channels"]) for m in self.hooks.take()], [2, 2, 1])

    def test_the_same_pattern_twice_is_refused(self):
        """One subscription per pattern: a second is a programming error, said at once."""
        self.subscribe("odin.token.A.trade")
        with self.assertRaises(ValueError):
            self.subscribe("odin.token.A.trade")

    def test_resubscribe_with_own_positions_after_reconnect(self):
        """After a reconnect each subscription sends the last position it saw per partition."""
        a = self.subscribe("odin.token.A.*")
        b = self.subscribe("odin.token.B.*")
        self.session.opened()
        [first] = self.hooks.take()                 # the same since ([]): one message
        self.assertEqual(first["channels"], ["odin.token.A.*", "odin.token.B.*"])
        self.ack(first, recovered=True, replayed=0, positions=[pos(0, 4), pos(1, 2)])
        self.session.received(event("odin.token.A.trade", 0, 5))
        self.session.received(event("odin.token.B.trade", 1, 6))
        again = self.reconnect()
        self.assertEqual({tuple(m["channels"]): m["since"] for m in again}, {
            ("odin.token.A.*",): [pos(0, 5), pos(1, 2)],
            ("odin.token.B.*",): [pos(0, 4), pos(1, 6)]})
        self.assertEqual((got(a), got(b)), ([5], [6]))
        self.assertEqual((a.state, b.state), (State.PENDING, State.PENDING))

    def test_positions_given_to_subscribe_are_sent(self):
        """since= (positions stored by a bot) is what the first subscribe recovers from."""
        sub = self.subscribe("odin.token.*.*", since=[pos(1, 9), pos(0, 3)])
        self.session.opened()
        [msg] = self.hooks.take()
        self.assertEqual(msg["since"], [pos(0, 3), pos(1, 9)])
        self.assertEqual(sub.positions, [pos(0, 3), pos(1, 9)])


class RecoveryTests(SessionCase):
    def live(self, pattern: str = "odin.token.*.*", **options: Any) -> Subscription:
        sub = self.subscribe(pattern, **options)
        self.session.opened() if not self.session.connected else None
        [msg] = self.hooks.take()
        self.ack(msg, recovered=True, replayed=0, positions=[pos(0, 10)])
        return sub

    def test_not_recovered_is_a_gap_item_and_live_goes_on(self):
        """recovered: false yields a Gap (not an exception); live events follow in the iterator."""
        sub = self.live()
        self.session.received(event("odin.token.A.trade", 0, 11))
        [msg] = self.reconnect()
        self.ack(msg, recovered=False, reason="too_old", positions=[pos(0, 50)])
        self.session.received(event("odin.token.A.trade", 0, 51))
        self.assertEqual(got(sub), [11, ("gap", "too_old"), 51])

    def test_not_recovered_ahead_drops_the_live_events_held(self):
        """
        recovered: false with ahead (a node behind the one the client left):
        the live events at or before the positions held are dropped; the
        ack's positions replace those behind them or of another epoch.
        """
        sub = self.live()
        for partition, offset in ((0, 50), (1, 20), (2, 3)):
            self.session.received(event("odin.token.A.trade", partition, offset))
        [msg] = self.reconnect()
        self.assertEqual(msg["since"], [pos(0, 50), pos(1, 20), pos(2, 3)])
        self.ack(msg, recovered=False, reason="ahead",
                 positions=[pos(0, 40), pos(1, 30), pos(2, 1, "ep2")])
        self.assertEqual(sub.positions, [pos(0, 50), pos(1, 30), pos(2, 1, "ep2")])
        for offset in (41, 49, 50, 51):
            self.session.received(event("odin.token.A.trade", 0, offset))
        self.session.received(event("odin.token.A.trade", 1, 31))
        self.session.received(event("odin.token.A.trade", 2, 2, pos=pos(2, 2, "ep2")))
        self.assertEqual(got(sub), [50, 20, 3, ("gap", "ahead"), 51, 31, 2])

    def test_duplicates_and_older_events_are_dropped(self):
        """An event at or before the last position of its partition is not yielded again."""
        sub = self.live()
        for offset in (11, 12, 12, 11, 13):
            self.session.received(event("odin.token.A.trade", 0, offset))
        self.session.received(event("odin.token.A.trade", 0, 1, pos=pos(0, 1, "ep2")))
        self.assertEqual(got(sub), [11, 12, 13, 1])

    def test_replay_behind_earlier_queued_events_is_put_in_order(self):
        """
        An ack that overtook events queued before it: the replay's events
        are collected and yielded in order once all replayed are here, each once.
        """
        a = self.live("odin.token.*.trade")
        self.session.received(event("odin.token.A.trade", 0, 11))
        b = self.subscribe("odin.token.A.*", since=[pos(0, 10)])
        [msg] = self.hooks.take()
        self.ack(msg, recovered=True, replayed=2, positions=[pos(0, 12)])
        self.session.received(event("odin.token.A.trade", 0, 12))   # queued for A before
        self.session.received(event("odin.token.A.trade", 0, 11))   # B's replay
        self.session.received(event("odin.token.A.trade", 0, 12))
        self.session.received(event("odin.token.A.trade", 0, 13))   # live
        self.assertEqual((got(a), got(b)), ([11, 12, 13], [11, 12, 13]))

    def gap(self, reason: str = "too_old", **streams: str | None) -> None:
        self.session.received({"type": "gap", "reason": reason, "streams": {
            stream.replace("_", ":"): position for stream, position in streams.items()}})

    def test_gap_notice_recovers_in_order_once(self):
        """
        A gap notice: the recovering subscriptions resubscribe with the
        given position; live events of the stream that come before the ack
        are held, and with the replay they are yielded in order, each once,
        then live; no Gap item (nothing was lost).
        """
        sub = self.live()
        plain = self.live("odin.token.B.*", recover=False)
        self.session.received(event("odin.token.A.trade", 0, 11))
        self.gap(**{f"{T}_0_ep1": pos(0, 11)})
        [msg] = self.hooks.take()
        self.assertEqual((msg["channels"], msg["since"]), (["odin.token.*.*"], [pos(0, 11)]))
        self.session.received(event("odin.token.A.trade", 0, 15))    # live, after the gap
        self.ack(msg, recovered=True, replayed=3, positions=[pos(0, 15)])
        for offset in (12, 14, 15):                                  # the replay
            self.session.received(event("odin.token.A.trade", 0, offset))
        self.session.received(event("odin.token.A.trade", 0, 16))
        self.assertEqual(got(sub), [11, 12, 14, 15, 16])
        self.assertEqual(got(plain), [])

    def test_gap_notice_not_recovered_is_a_gap_item(self):
        """A gap whose recovery fails (too_old): a Gap item, then the held and live events."""
        sub = self.live()
        self.gap(**{f"{T}_0_ep1": pos(0, 11)})
        [msg] = self.hooks.take()
        self.session.received(event("odin.token.A.trade", 0, 40))
        self.ack(msg, recovered=False, reason="too_old", positions=[pos(0, 40)])
        self.session.received(event("odin.token.A.trade", 0, 41))
        self.assertEqual(got(sub), [("gap", "too_old"), 40, 41])

    def test_gap_without_position_and_conflation(self):
        """A stream that cannot be recovered is a Gap item at once; conflation is not recovered."""
        sub = self.live()
        self.gap("conflated", **{f"{T}_0_ep1": None})
        self.assertEqual((self.hooks.take(), got(sub)), ([], []))
        self.gap("undecodable", **{f"{T}_0_ep1": None})
        self.assertEqual((self.hooks.take(), got(sub)), ([], [("gap", "undecodable")]))

    def test_refused_positions_are_a_gap_then_current_positions(self):
        """unknown_position for a since: a Gap, then a subscribe from the current positions."""
        sub = self.subscribe("odin.token.*.*", since=[pos(0, 3)])
        self.session.opened()
        [msg] = self.hooks.take()
        self.session.received({"type": "error", "code": "unknown_position", "message": "m",
                               "id": msg["id"]})
        [again] = self.hooks.take()
        self.assertEqual((again["since"], got(sub)), ([], [("gap", "unknown_position")]))

    def test_tops_count_once_an_event_past_them_came(self):
        """A positions refresh's tops fill since only after an event past them (none lost)."""
        sub = self.live("odin.token.A.*")
        self.session.refresh_positions()
        [msg] = self.hooks.take()
        self.assertEqual(msg["since"], [])
        self.ack(msg, recovered=True, replayed=0, positions=[pos(0, 40), pos(1, 7)])
        self.session.received(event("odin.token.A.trade", 0, 30))   # queued before the ack
        self.session.received(event("odin.token.A.trade", 0, 41))
        self.assertEqual(got(sub), [30, 41])
        self.assertEqual(sub.positions, [pos(0, 41), pos(1, 7)])


class SnapshotTests(SessionCase):
    def test_snapshot_events_go_to_the_subscription_that_asked(self):
        """Snapshot events reach only the subscription whose subscribe asked for them."""
        wild = self.subscribe("odin.token.*.price")
        self.session.opened()
        self.ack(self.hooks.take()[0], recovered=True, replayed=0, positions=[pos(0, 9)])
        exact = self.subscribe("odin.token.A.price", snapshot=True)
        [msg] = self.hooks.take()
        self.assertTrue(msg["snapshot"])
        self.ack(msg, recovered=True, replayed=0, snapshot=1, positions=[pos(0, 9)])
        self.session.received(event("odin.token.A.price", 0, 8, snapshot=True))
        self.session.received(event("odin.token.A.price", 0, 10))
        self.assertEqual((got(wild), got(exact)), ([10], ["s8", 10]))


    def test_after_a_reconnect_the_snapshot_comes_only_if_recovery_failed(self):
        """One message asks for both; a failed recovery's Gap says a snapshot follows."""
        sub = self.subscribe("odin.token.A.price", snapshot=True)
        self.session.opened()
        [first] = self.hooks.take()
        self.ack(first, recovered=True, replayed=0, snapshot=1, positions=[pos(0, 5)])
        self.session.received(event("odin.token.A.price", 0, 5, snapshot=True))
        [again] = self.reconnect()
        self.assertEqual((again["since"], again["snapshot"]), ([pos(0, 5)], True))
        self.ack(again, recovered=False, reason="too_old", snapshot=1, positions=[pos(0, 90)])
        self.session.received(event("odin.token.A.price", 0, 90, snapshot=True))
        self.session.received(event("odin.token.A.price", 0, 91))
        self.assertEqual(got(sub), ["s5", ("gap", "too_old"), "s90", 91])


class RefusalTests(SessionCase):
    def test_refused_batch_is_retried_one_by_one(self):
        """A refused resubscription batch is asked again per pattern; the bad one fails alone."""
        good = self.subscribe("odin.token.A.trade", recover=False)
        bad = self.subscribe("odin.token.B.trade", recover=False)
        self.session.opened()
        [batch] = self.hooks.take()
        self.session.received({"type": "error", "code": "forbidden", "message": "no",
                               "id": batch["id"]})
        one, two = self.hooks.take()
        self.ack(one)
        self.session.received({"type": "error", "code": "forbidden", "message": "no",
                               "id": two["id"]})
        self.assertEqual((good.state, bad.state), (State.SUBSCRIBED, State.FAILED))
        self.assertEqual([e.code for e in self.hooks.errors], ["forbidden"])
        with self.assertRaises(SubscriptionFailed):
            asyncio.run(bad.__anext__())

    def test_rate_limited_subscribe_is_sent_again_later(self):
        """rate_limited: the subscribe is sent again after the retry delay."""
        self.subscribe("odin.token.A.trade", recover=False)
        self.session.opened()
        [msg] = self.hooks.take()
        self.session.received({"type": "error", "code": "rate_limited", "message": "slow",
                               "id": msg["id"]})
        [(delay, call)] = self.hooks.delayed
        call()
        [again] = self.hooks.take()
        self.assertEqual((delay, again["channels"]), (1.0, ["odin.token.A.trade"]))

    def test_refresh_dropping_channels_fails_them(self):
        """A refreshed token that no longer grants a channel: its subscription fails (forbidden)."""
        sub = self.subscribe("odin.token.A.trade", recover=False)
        self.session.opened()
        self.ack(self.hooks.take()[0])
        self.session.request({"type": "refresh", "token": "new"}, lambda msg: None, "new")
        [msg] = self.hooks.take()
        self.session.received({"type": "refreshed", "expires": 99, "id": msg["id"],
                               "unsubscribed": ["odin.token.A.trade"]})
        self.assertEqual((self.hooks.tokens, sub.state, sub.error and sub.error.code),
                         ([("new", 99.0)], State.FAILED, "forbidden"))


class EndTests(SessionCase):
    def test_unsubscribe_ends_the_iterator(self):
        """unsubscribe() sends unsubscribe and the iterator stops after what it had."""
        sub = self.subscribe("odin.token.A.trade", recover=False)
        self.session.opened()
        self.ack(self.hooks.take()[0])
        self.session.received(event("odin.token.A.trade", 0, 1))
        sub.unsubscribe()
        [msg] = self.hooks.take()

        async def read() -> list[object]:
            return [item.data["o"] async for item in sub]
        self.assertEqual((msg["type"], asyncio.run(read())), ("unsubscribe", [1]))


class SubscriptionOptionTests(SessionCase):
    def test_deltas_made_whole(self):
        """Delta events come out as whole data; a delta without a base is an error, not an event."""
        sub = self.subscribe("odin.token.A.price", options={"delta": True})
        self.session.opened()
        (request,) = self.hooks.take()
        self.assertEqual(request["delta"], True)
        self.ack(request)
        c = "odin.token.A.price"
        self.session.received({"type": "event", "channel": c, "ts": 1, "pos": pos(0, 1),
                               "data": {"p": 1, "q": 2, "name": "n"}})
        self.session.received({"type": "event", "channel": c, "ts": 1, "pos": pos(0, 2),
                               "delta": {"p": 5, "q": None, "book": {"b": 1}}})
        datas = []
        while not sub._items.empty():
            item = sub._items.get_nowait()
            self.assertIsInstance(item, Event)
            datas.append(item.data)
            self.assertNotIn("delta", item.raw)
        self.assertEqual(datas, [{"p": 1, "q": 2, "name": "n"}, {"p": 5, "name": "n",
                                                               "book": {"b": 1}}])
        self.session.lost()
        self.session.opened()
        self.ack(self.hooks.take()[0])
        self.session.received({"type": "event", "channel": c, "ts": 1, "pos": pos(0, 3),
                               "delta": {"p": 6}})
        self.assertEqual([e.code for e in self.hooks.errors], ["delta_without_base"])
        self.assertEqual(got(sub), [])

    def test_compact_deltas_made_whole(self):
        """
        Compact deltas come out as whole events (channel, data, ts, pos
        rebuilt from the stream's whole event and the deltas before); one
        of a stream no whole event started is an error, not an event.
        """
        sub = self.subscribe("odin.token.A.price", options={"delta": "compact"})
        self.session.opened()
        self.ack(self.hooks.take()[0])
        c = "odin.token.A.price"
        self.session.received({"type": "event", "channel": c, "ts": 100, "pos": pos(0, 1),
                               "data": {"p": 1.5, "seq": 1, "name": "n"}, "sid": 3})
        self.session.received_compact([3, 2, 50, {"p": 1.6}, {"seq": 1}])
        self.session.received_compact([3, 1, 25, {"name": None}])
        events = []
        while not sub._items.empty():
            events.append(sub._items.get_nowait())
        self.assertEqual([(e.channel, e.data, e.ts, e.pos) for e in events], [
            (c, {"p": 1.5, "seq": 1, "name": "n"}, 100, pos(0, 1)),
            (c, {"p": 1.6, "seq": 2, "name": "n"}, 150, pos(0, 3)),
            (c, {"p": 1.6, "seq": 2}, 175, pos(0, 4))])
        self.session.received_compact([4, 1, 1, {}])
        self.session.received_compact(["x"])
        self.assertEqual([e.code for e in self.hooks.errors], ["delta_without_base"] * 2)
        self.session.lost()
        self.session.opened()
        self.ack(self.hooks.take()[0])
        self.session.received_compact([3, 1, 1, {}])      # a new connection: streams restart
        self.assertEqual(len(self.hooks.errors), 3)
        self.assertEqual(got(sub), [])

    def test_options_on_every_subscribe_of_the_channel(self):
        """max_rate and filter go on the first subscribe and on a gap's recovery of it."""
        sub = self.subscribe("odin.token.A.trade",
                             options={"max_rate": 2, "filter": {"size": {"gte": 100}}})
        plain = self.subscribe("odin.token.B.trade")
        self.session.opened()
        sent = self.hooks.take()
        by_channel = {m["channels"][0]: m for m in sent}
        self.assertEqual((by_channel[sub.pattern]["max_rate"], by_channel[sub.pattern]["filter"]),
                         (2, {"size": {"gte": 100}}))
        self.assertNotIn("max_rate", by_channel[plain.pattern])
        for m in sent:
            self.ack(m, recovered=True, positions=[pos(0, 1)])
        self.session.received({"type": "gap", "reason": "too_old", "streams": {
            f"{T}:0:ep1": pos(0, 1)}})
        again = [m for m in self.hooks.take() if sub.pattern in m["channels"]]
        self.assertEqual([m.get("max_rate") for m in again], [2])


class UndecodableTests(SessionCase):
    live = RecoveryTests.live

    def hole(self, offset: int, channel: str = "odin.token.A.trade") -> None:
        self.session.received({"type": "gap", "reason": "undecodable", "detail": "invalid_json",
                               "channel": channel, "streams": {f"{T}:0:ep1": pos(0, offset)}})

    def test_told_in_place_and_never_recovered(self):
        """
        An undecodable gap is a Gap item between the events around it, for
        the subscriptions of its channel only; no resubscription is sent
        (nothing can recover it) and its position counts as seen.
        """
        sub = self.live()
        other = self.live("odin.token.B.*")
        self.session.received(event("odin.token.A.trade", 0, 11))
        self.hole(12)
        self.session.received(event("odin.token.A.trade", 0, 13))
        self.assertEqual(self.hooks.take(), [])
        self.assertEqual(got(sub), [11, ("gap", "undecodable"), 13])
        self.assertEqual(got(other), [])

    def test_replayed_again_is_dropped(self):
        """
        The same hole replayed by a recovery (its position already seen)
        is not handed over twice: a recovery across it cannot loop.
        """
        sub = self.live()
        self.hole(12)
        self.hole(12)
        self.assertEqual(got(sub), [("gap", "undecodable")])
        self.assertEqual(self.hooks.take(), [])
