"""
Recoveries held until the shard can answer them truly
(L{odin_ws.shard.clients.recoveryhold}), at a shard's WebSocket and SSE
protocols driven by fakes: a restarted shard still warming up, a shard that
has not caught up on a partition (a dead shard's, not consumed again yet),
the bound, and what a held connection's other messages do meanwhile.
"""

from __future__ import annotations

import json
import time

from odin_ws.common.events import Event
from odin_ws.shard.clients.recoveryhold import POLL
from odin_ws.shard.kafka.warmread import WarmedPartition, WarmupReport, WarmupState
from tests.helpers import ShardTestCase, StreamClient, sample, text
from tests.helpers.sse import sse_request

TOPIC = "odin.trades"


class RecoveryHoldTestCase(ShardTestCase):
    settings = {"kafka__topics": {TOPIC: "trade"}}

    def event(self, offset: int, partition: int = 0) -> Event:
        return Event.build("A", "trade", b'{"o":%d}' % offset, int(time.time() * 1000), TOPIC,
                           partition, offset, "ep1")

    def warming(self) -> None:
        """The shard's warm-up is reading the past back (as after a restart)."""
        self.shard.warmup.report = WarmupReport(state=WarmupState.RUNNING)

    def warmed(self, offsets: range, partition: int = 0) -> None:
        """The warm-up hands over a partition (events produced before the shard started)."""
        past = self.shard.backfill.started_ms - 1000
        self.shard.backfill.backfill(WarmedPartition(
            TOPIC, partition, "ep1", offsets[0], offsets[-1],
            [Event.build("A", "trade", b'{"o":%d}' % o, past, TOPIC, partition, o, "ep1")
             for o in offsets]))

    def done(self) -> None:
        self.shard.warmup.report = WarmupReport(state=WarmupState.DONE)

    def recover(self, client, offset: int, partition: int = 0, id: int = 1) -> list[dict]:
        client.send(text({"type": "subscribe", "channels": ["odin.token.A.trade"],
                          "since": [f"{TOPIC}:{partition}:ep1:{offset}"], "id": id}))
        return client.messages()

    def held(self, outcome: str) -> float:
        return sample("odinws_recoveries_held_total", outcome=outcome)

    def got(self, msgs: list[dict]) -> list[int]:
        return [m["data"]["o"] for m in msgs if m["type"] == "event"]


class WarmingTests(RecoveryHoldTestCase):
    def test_held_until_warmed_then_recovered(self):
        """
        A client of a killed shard reconnects to its restarted process while
        the warm-up still reads the past back: its recovery is not answered
        unknown_partition but waits, and once the partition is warmed it is
        answered recovered: true with every missed event, then live.
        """
        before = self.held("answered")
        self.warming()
        c = self.connect()
        self.assertEqual(self.recover(c, 14), [])
        self.advance(1.0)
        self.assertEqual(c.messages(), [])
        self.warmed(range(10, 20))
        self.advance(POLL)
        ack, *replayed = c.messages()
        self.assertEqual((ack["recovered"], ack["id"], self.got(replayed)),
                         (True, 1, [15, 16, 17, 18, 19]))
        self.assertEqual(self.held("answered") - before, 1)
        self.shard.delivery.deliver([self.event(o) for o in (19, 20)])
        self.assertEqual(self.got(c.messages()), [20])

    def test_below_live_start_held_until_the_past_is_loaded(self):
        """
        Live delivery began before the warm-up handed the partition over: a
        position below where it began waits (not too_old: those events were
        never evicted) and is recovered once the warm-up's past joins.
        """
        self.shard.delivery.deliver([self.event(o) for o in range(15, 21)])
        self.warming()
        c = self.connect()
        self.assertEqual(self.recover(c, 11), [])
        self.warmed(range(5, 15))
        self.advance(POLL)
        ack, *replayed = c.messages()
        self.assertEqual((ack["recovered"], self.got(replayed)), (True, list(range(12, 21))))

    def test_bound_then_answered_truly(self):
        """
        A warm-up that does not bring the partition within history.recovery_hold:
        the answer is recovered: false with not_loaded (the events were never
        loaded here), not unknown_partition or too_old; counted as timed out.
        """
        before = self.held("timed_out")
        self.warming()
        c = self.connect()
        self.shard.delivery.deliver([self.event(o) for o in range(15, 21)])
        self.assertEqual(self.recover(c, 11), [])
        self.assertEqual(self.recover(c, 3, partition=1, id=2), [])
        self.advance(self.shard.settings.history.recovery_hold - POLL)
        self.assertEqual(c.messages(), [])
        self.advance(POLL)
        acks = c.messages()
        self.assertEqual([(a["id"], a["recovered"], a["reason"]) for a in acks],
                         [(1, False, "not_loaded"), (2, False, "not_loaded")])
        self.assertEqual(self.held("timed_out") - before, 1)

    def test_after_the_warmup_answers_at_once(self):
        """Once the warm-up is over nothing waits: a partition never seen is unknown_partition."""
        self.done()
        c = self.connect()
        [ack] = self.recover(c, 3, partition=1)
        self.assertEqual((ack["recovered"], ack["reason"]), (False, "unknown_partition"))


class CatchUpTests(RecoveryHoldTestCase):
    def test_ahead_held_until_the_shard_caught_up(self):
        """
        A position past what this shard has seen (a client of a killed shard
        on the survivor, before the dead shard's partition is consumed again):
        held, then recovered once the partition's events arrive, and the
        events it had already are not sent again as live.
        """
        self.shard.delivery.deliver([self.event(o) for o in range(10, 13)])
        c = self.connect()
        self.assertEqual(self.recover(c, 15), [])
        self.shard.delivery.deliver([self.event(o) for o in range(13, 17)])
        self.advance(POLL)
        ack, *replayed = c.messages()
        self.assertEqual((ack["recovered"], self.got(replayed)), (True, [16]))
        self.shard.delivery.deliver([self.event(17)])
        self.assertEqual(self.got(c.messages()), [17])

    def test_later_messages_wait_behind_in_order(self):
        """
        Messages a client sends after a held subscribe are answered after it,
        in order: an unsubscribe of the same channel undoes it, it is not
        overtaken by it.
        """
        self.shard.delivery.deliver([self.event(10)])
        c = self.connect()
        self.assertEqual(self.recover(c, 12), [])
        c.send(text({"type": "ping", "id": 2}))
        c.send(text({"type": "unsubscribe", "channels": ["odin.token.A.trade"], "id": 3}))
        self.assertEqual(c.messages(), [])
        self.shard.delivery.deliver([self.event(o) for o in (11, 12, 13)])
        self.advance(POLL)
        msgs = c.messages()
        self.assertEqual([(m["type"], m.get("id")) for m in msgs],
                         [("subscribed", 1), ("event", None), ("pong", 2), ("unsubscribed", 3)])
        self.shard.delivery.deliver([self.event(14)])
        self.assertEqual(c.messages(), [])

    def test_client_leaving_ends_the_hold(self):
        """A client that leaves while held is forgotten and counted (gone); nothing is sent."""
        before = self.held("gone")
        self.shard.delivery.deliver([self.event(10)])
        c = self.connect()
        self.recover(c, 12)
        self.assertEqual(len(self.shard.recoveries), 1)
        c.proto.dropConnection(abort=True)
        c.settle()
        self.assertEqual((len(self.shard.recoveries), self.held("gone") - before), (0, 1))
        self.shard.delivery.deliver([self.event(o) for o in (11, 12, 13)])
        self.advance(POLL)

    def test_off(self):
        """history.recovery_hold 0: answered at once (ahead), as before."""
        self.reload_shard(history__recovery_hold=0)
        self.shard.delivery.deliver([self.event(10)])
        [ack] = self.recover(self.connect(), 12)
        self.assertEqual((ack["recovered"], ack["reason"]), (False, "ahead"))


class StreamHoldTests(RecoveryHoldTestCase):
    def test_stream_waits_then_opens_recovered(self):
        """
        An SSE stream recovering with Last-Event-ID from a shard not caught
        up: no answer yet; once caught up, 200 and the recovered ack, then
        the missed events. A stream that leaves meanwhile is forgotten.
        """
        self.shard.delivery.deliver([self.event(o) for o in range(10, 13)])
        client = StreamClient(self.shard)
        client.proto.dataReceived(sse_request("/sse", {"channels": "odin.token.A.trade"},
                                              (f"Last-Event-ID: {TOPIC}~ep1~0:14",)))
        self.assertEqual(client.wire(), b"")
        self.shard.delivery.deliver([self.event(o) for o in range(13, 17)])
        self.advance(POLL)
        head, _, body = client.wire().partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.1 200 "), head)
        ack, *events = client.parser.feed(body)
        self.assertEqual((ack.event, ack.json()["recovered"]), ("subscribed", True))
        self.assertEqual([json.loads(m.data)["data"]["o"] for m in events], [15, 16])
        gone = StreamClient(self.shard, "10.0.0.2")
        gone.proto.dataReceived(sse_request("/sse", {"channels": "odin.token.A.trade"},
                                            (f"Last-Event-ID: {TOPIC}~ep1~0:30",)))
        self.assertEqual(len(self.shard.recoveries), 1)
        gone.drop()
        self.assertEqual(len(self.shard.recoveries), 0)
