"""
Holes (L{odin_ws.shard.history.holes}): undecodable records told to their
subscribers in place, live, relayed, recovered, over SSE and with options,
driven by a fake shard.
"""

from __future__ import annotations

import json
import time

from odin_ws.common.events import Event, decode_batch, encode_batch
from odin_ws.shard.history.holes import UNDECODABLE, Hole, is_hole
from tests.helpers import ShardTestCase, StreamClient, text

TOPIC = "odin.trades"
CHANNEL = "odin.token.A.trade"


class HoleTestCase(ShardTestCase):
    settings = {"kafka__topics": {TOPIC: "trade"}}

    def setUp(self):
        super().setUp()
        self.offset = 99

    def event(self) -> Event:
        self.offset += 1
        return Event.build("A", "trade", b'{"o":%d}' % self.offset, int(time.time() * 1000),
                           TOPIC, 0, self.offset, "ep1")

    def hole(self) -> Hole:
        self.offset += 1
        return Hole("invalid_json", "A", "trade", int(time.time() * 1000), TOPIC, 0,
                    self.offset, "ep1")

    def good_bad_good(self) -> list[Event]:
        return [self.event(), self.hole(), self.event()]

    def gap(self, offset: int) -> dict:
        return {"type": "gap", "reason": UNDECODABLE, "detail": "invalid_json",
                "channel": CHANNEL, "streams": {f"{TOPIC}:0:ep1": f"{TOPIC}:0:ep1:{offset}"}}


class LiveHoleTests(HoleTestCase):
    def test_subscriber_is_told_in_place(self):
        """
        Good, undecodable, good on one channel: a subscriber gets the event,
        the gap (undecodable, the hole's position), the event, in that order.
        """
        c = self.connect()
        self.subscribe(c, CHANNEL)
        self.shard.delivery.deliver(self.good_bad_good())
        first, gap, last = c.messages()
        self.assertEqual((first["type"], first["data"]), ("event", {"o": 100}))
        self.assertEqual(gap, self.gap(101))
        self.assertEqual((last["type"], last["data"]), ("event", {"o": 102}))

    def test_relayed_hole_is_still_a_hole(self):
        """
        A hole crosses the hub's batch encoding unchanged (another shard
        delivers it as the consuming one does) and is told from there.
        """
        batch = decode_batch(encode_batch(self.good_bad_good()))
        self.assertEqual([is_hole(e) for e in batch], [False, True, False])
        c = self.connect()
        self.subscribe(c, "odin.token.*.*")
        self.shard.delivery.deliver(batch)
        self.assertEqual([m["type"] for m in c.messages()], ["event", "gap", "event"])

    def test_options_pass_the_gap_as_it_is(self):
        """
        A subscription with a filter and deltas gets the gap too (it has no
        data to filter or diff), and deltas go on from the last data sent.
        """
        c = self.connect()
        c.send(text({"type": "subscribe", "channels": [CHANNEL], "delta": True,
                     "filter": {"o": {"gte": 0}}}))
        [ack] = c.messages()
        self.assertEqual(ack["type"], "subscribed", ack)
        self.shard.delivery.deliver(self.good_bad_good())
        self.assertEqual([m["type"] for m in c.messages()], ["event", "gap", "event"])


class RecoveryTests(HoleTestCase):
    def test_recovery_across_a_hole_tells_it(self):
        """
        A client recovering from before a hole gets recovered: true, the
        events after its position and, in the hole's place, its gap: the
        hole is never skipped silently by a recovery.
        """
        events = self.good_bad_good()
        self.shard.delivery.deliver(events)
        since = json.loads(events[0].envelope)["pos"]
        c = self.connect()
        c.send(text({"type": "subscribe", "channels": [CHANNEL], "since": [since]}))
        ack, gap, last = c.messages()
        self.assertEqual((ack["recovered"], ack["replayed"]), (True, 2))
        self.assertEqual(gap, self.gap(101))
        self.assertEqual(last["data"], {"o": 102})

    def test_snapshot_of_a_hole_is_its_gap(self):
        """
        When a channel's latest record could not be decoded, a snapshot says
        so with the gap, not with an event that is not the latest.
        """
        self.shard.delivery.deliver([self.event(), self.hole()])
        c = self.connect()
        c.send(text({"type": "subscribe", "channels": [CHANNEL], "snapshot": True}))
        ack, gap = c.messages()
        self.assertEqual(ack["snapshot"], 1)
        self.assertEqual(gap, self.gap(101))


class SseHoleTests(HoleTestCase):
    def stream(self, query: dict) -> StreamClient:
        client = StreamClient(self.shard, "10.0.0.1", None)
        self.assertEqual(client.request(query, ()), 200, client.body)
        return client

    def test_stream_gets_a_named_gap_with_an_id(self):
        """
        An SSE stream gets the hole as a named gap event, between the two
        events, with an id past the hole (a reconnect resumes after it).
        """
        s = self.stream({"channels": CHANNEL})
        s.messages()
        self.shard.delivery.deliver(self.good_bad_good())
        first, gap, last = s.messages()
        self.assertEqual((first.event, gap.event, last.event), (None, "gap", None))
        self.assertEqual(gap.json(), self.gap(101))
        self.assertTrue(gap.id.endswith(":101"), gap.id)

    def test_stream_recovering_across_a_hole_is_told(self):
        """A stream opened from before a hole replays it as a named gap."""
        events = self.good_bad_good()
        self.shard.delivery.deliver(events)
        since = json.loads(events[0].envelope)["pos"]
        s = self.stream({"channels": CHANNEL, "since": since})
        ack, gap, last = s.messages()
        self.assertTrue(ack.json()["recovered"])
        self.assertEqual((gap.event, gap.json()), ("gap", self.gap(101)))
        self.assertEqual(last.json()["data"], {"o": 102})

    def test_stream_with_options_gets_the_named_gap(self):
        """
        A stream with a filter and a rate cap gets the hole as a named gap
        too, past the filter and the cap (it has no data for them).
        """
        s = self.stream({"channels": CHANNEL, "filter": json.dumps({"o": {"gte": 0}}),
                         "max_rate": "100"})
        s.messages()
        self.shard.delivery.deliver(self.good_bad_good())
        self.advance(1)
        msgs = s.messages()
        self.assertEqual([m.event for m in msgs], [None, "gap", None])
        self.assertEqual(msgs[1].json(), self.gap(101))


class CountedTests(HoleTestCase):
    """Every subscriber told of a hole counts in odinws_gaps_notified_total{reason="undecodable"}."""

    def told(self) -> int:
        return self.shard.fanout.stats.gaps.get(UNDECODABLE, 0)

    def test_live_recipients_are_counted(self):
        """
        A hole reaching three plain subscribers and one with options counts
        four; events that are not holes count nothing.
        """
        for _ in range(3):
            self.subscribe(self.connect(), CHANNEL)
        optioned = self.connect()
        optioned.send(text({"type": "subscribe", "channels": [CHANNEL],
                            "filter": {"o": {"gte": 0}}}))
        self.shard.delivery.deliver([self.event(), self.event()])
        self.assertEqual(self.told(), 0)
        self.shard.delivery.deliver(self.good_bad_good())
        self.assertEqual(self.told(), 4)

    def test_stream_recipients_are_counted(self):
        """An SSE stream told of a hole live counts one."""
        stream = StreamClient(self.shard, "10.0.0.1", None)
        self.assertEqual(stream.request({"channels": CHANNEL}, ()), 200, stream.body)
        self.shard.delivery.deliver(self.good_bad_good())
        self.assertEqual(self.told(), 1)

    def test_recoveries_across_a_hole_are_counted(self):
        """A WebSocket recovery and an SSE stream's recovery replaying a hole count one each."""
        events = self.good_bad_good()
        self.shard.delivery.deliver(events)
        since = json.loads(events[0].envelope)["pos"]
        c = self.connect()
        c.send(text({"type": "subscribe", "channels": [CHANNEL], "since": [since]}))
        self.assertEqual(self.told(), 1)
        stream = StreamClient(self.shard, "10.0.0.1", None)
        self.assertEqual(stream.request({"channels": CHANNEL, "since": since}, ()), 200,
                         stream.body)
        self.assertEqual(self.told(), 2)
