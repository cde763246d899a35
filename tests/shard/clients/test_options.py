"""
Tests for L{odin_ws.shard.clients.options} through a L{Session}: subscribes
with delta, max_rate and filter held as variants, their error codes, the
per-connection and per-shard filter bounds, one variant per channel, and
everything given back on unsubscribe and close.
"""

from __future__ import annotations

import json
import time
from typing import Any

from autobahn.websocket.protocol import WebSocketProtocol

from odin_ws.common.events import Event
from odin_ws.shard.clients import messages
from odin_ws.shard.clients.session import Session
from odin_ws.shard.delivery.variants import MERGE_PATCH, Variant
from tests.shard.clients.test_session import FakeTransport, SessionCase


def subscribe(session: Session, *channels: str, **options: Any) -> None:
    session.message(json.dumps({"type": "subscribe", "channels": list(channels),
                                **options}).encode())


class OptionTests(SessionCase):
    settings = {"limits__max_filters_per_connection": 2, "limits__max_shard_filters": 3,
                "limits__message_rate": 1000, "limits__message_burst": 1000}

    def last(self, conn: FakeTransport | None = None) -> dict[str, Any]:
        return (conn or self.conn).replies[-1]

    def test_options_make_a_variant(self):
        """A subscribe with options is held with its variant, not among the plain subscriptions."""
        self.opened()
        subscribe(self.session, "odin.token.A.price", delta=True, max_rate=2, id=1)
        self.assertEqual(self.last()["type"], "subscribed")
        box = self.conn.outbox
        self.assertEqual(self.host.subscriptions.count(box), 0)
        self.assertEqual(self.host.options.index.variant_of(box, ("A", "price")),
                         Variant(delta=MERGE_PATCH, max_rate=2.0))

    def test_bad_options_answered_with_their_codes(self):
        """Each bad option gets its error code; nothing is held after."""
        self.opened()
        cases = [({"delta": "fossil"}, messages.BAD_DELTA),
                 ({"max_rate": 1000}, messages.BAD_MAX_RATE),
                 ({"filter": {"size": {"between": [1, 2]}}}, messages.BAD_FILTER),
                 ({"filter": {"or": [{f"f{i}": i} for i in range(200)]}},
                  messages.FILTER_TOO_LARGE)]
        for options, code in cases:
            subscribe(self.session, "odin.token.A.trade", id=9, **options)
            self.assertEqual((self.last()["type"], self.last()["code"], self.last()["id"]),
                             ("error", code, 9))
        self.assertEqual(self.host.options.index.count(self.conn.outbox), 0)
        self.assertEqual(len(self.host.options.filters), 0)

    def test_one_variant_per_channel(self):
        """A pattern overlapping one held with other options is refused: options_conflict."""
        self.opened()
        subscribe(self.session, "odin.token.*.trade")
        subscribe(self.session, "odin.token.A.trade", delta=True)
        self.assertEqual(self.last()["code"], messages.OPTIONS_CONFLICT)
        subscribe(self.session, "odin.token.A.price", delta=True)
        self.assertEqual(self.last()["type"], "subscribed")
        subscribe(self.session, "odin.token.A.*", max_rate=1)
        self.assertEqual(self.last()["code"], messages.OPTIONS_CONFLICT)
        # The same options again: already held, no error.
        subscribe(self.session, "odin.token.A.price", delta=True)
        self.assertEqual(self.last()["type"], "subscribed")

    def test_filters_bounded_per_connection_and_shard(self):
        """Distinct filters: at most 2 per connection (too_many_filters), 3 per shard."""
        self.opened()
        for size in (1, 2):
            subscribe(self.session, f"odin.token.T{size}.trade", filter={"size": size})
            self.assertEqual(self.last()["type"], "subscribed")
        subscribe(self.session, "odin.token.T3.trade", filter={"size": 3})
        self.assertEqual(self.last()["code"], messages.TOO_MANY_FILTERS)
        # A filter the connection carries already is no new one.
        subscribe(self.session, "odin.token.T4.trade", filter={"size": 1})
        self.assertEqual(self.last()["type"], "subscribed")
        other = FakeTransport()
        s2 = Session(self.host, other, "connection")
        s2.identify("10.0.0.2", {})
        s2.admit({}, {}, ())
        s2.open(0.0, lambda: None)
        subscribe(s2, "odin.token.A.trade", filter={"size": 5})
        self.assertEqual(self.last(other)["type"], "subscribed")
        subscribe(s2, "odin.token.B.trade", filter={"size": 6})
        self.assertEqual(self.last(other)["code"], messages.SERVER_FILTER_LIMIT)
        # The same filter as another connection's is shared, not a new one.
        subscribe(s2, "odin.token.B.trade", filter={"size": 1})
        self.assertEqual(self.last(other)["type"], "subscribed")
        self.assertEqual(len(self.host.options.filters), 3)

    def test_unsubscribe_and_close_give_everything_back(self):
        """Unsubscribing and closing release the patterns, the filters and the budget."""
        self.opened()
        subscribe(self.session, "odin.token.A.trade", "odin.token.B.trade", filter={"size": 1})
        subscribe(self.session, "odin.token.C.trade", filter={"size": 1}, delta=True)
        box = self.conn.outbox
        pool = self.host.options.filters
        shared = next(iter(self.host.options.index.held(box).values())).filter
        self.assertEqual(pool.holders(shared), 1)
        self.session.message(b'{"type":"unsubscribe","channels":["odin.token.A.trade"]}')
        self.assertEqual(self.host.options.index.count(box), 2)
        self.assertEqual(pool.holders(shared), 1)
        self.session.closed(box, self.host.subscriptions)
        self.assertEqual((self.host.options.index.total, len(pool)), (0, 0))
        self.assertEqual(self.host.subscriptions.budget.total, 0)



class LimitTests(SessionCase):
    settings = {"limits__max_subscriptions": 2}

    def last(self) -> dict[str, Any]:
        return self.conn.replies[-1]

    def test_subscription_limit_counts_both(self):
        """limits.max_subscriptions counts plain subscriptions and those with options together."""
        self.opened()
        subscribe(self.session, "odin.token.A.trade")
        subscribe(self.session, "odin.token.B.trade", "odin.token.C.trade", delta=True)
        self.assertEqual(self.last()["code"], messages.TOO_MANY_SUBSCRIPTIONS)
        subscribe(self.session, "odin.token.B.trade", delta=True)
        self.assertEqual(self.last()["type"], "subscribed")


class FilteredAnswerTests(SessionCase):
    settings = {"kafka__topics": {"odin.trades": "trade"}, "limits__message_rate": 1000,
                "limits__message_burst": 1000}

    def setUp(self) -> None:
        super().setUp()
        now = int(time.time() * 1000)
        for offset, (token, size) in enumerate([("A", 150), ("A", 5), ("B", 500), ("B", 7),
                                                ("A", 120)]):
            self.host.history.add(Event.build(token, "trade", b'{"size":%d}' % size, now,
                                              "odin.trades", 0, offset, "ep1"))

    def test_snapshot_and_replay_filtered(self):
        """A filtered subscription's snapshot and replay leave out what the filter refuses."""
        self.conn.state = WebSocketProtocol.STATE_OPEN   # what the Outbox reads of its protocol
        self.opened()
        subscribe(self.session, "odin.token.*.trade", snapshot=True,
                  filter={"size": {"gte": 100}})
        ack = self.last()
        # A's latest (120) passes, B's (7) does not; unfiltered it would be 2.
        self.assertEqual((ack["type"], ack["snapshot"]), ("subscribed", 1))
        msg = messages.Subscribe([messages.ChannelSpec("odin.token.*.trade", "*", "trade")],
                                 since={("odin.trades", 0): ("ep1", 0)},
                                 filter={"size": {"gte": 100}})
        variant = self.host.options.variant(msg, object())
        answer = self.session.answer(msg, 1 << 20, keep=self.host.options.keeps(variant))
        # After offset 0: 5, 500, 7, 120; the filter keeps two.
        self.assertEqual((answer.recovered, answer.replayed), (True, 2))
        self.assertEqual([json.loads(e.envelope)["data"] for e in answer.events or []],
                         [{"size": 500}, {"size": 120}])

    def last(self) -> dict[str, Any]:
        return self.conn.replies[-1]
