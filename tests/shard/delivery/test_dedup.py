"""
The shard's event path (its own consumption and the hub's relay):
de-duplication (re-reads are dropped, a new incarnation of a topic is not)
and the delivery latency metrics.
"""

from __future__ import annotations

import time

from odin_ws.common.events import Event
from tests.helpers import ShardTestCase, sample


class ShardDedupTests(ShardTestCase):

    def event(self, offset: int, epoch: str, seq: int, partition: int = 0) -> Event:
        return Event.build("ABC", "trade", b'{"seq":%d}' % seq, int(time.time() * 1000),
                           "odin.trades", partition, offset, epoch=epoch)

    def test_newIncarnationIsDelivered(self):
        """
        After the broker is replaced (offsets restart at 0 under a new
        epoch), relayed and consumed events are delivered, not dropped as
        duplicates; the reset is counted and audited; re-reads of the new
        log and late events of the old one are still dropped.
        """
        client = self.connect()
        self.subscribe(client, "odin.token.ABC.trade")
        resets = sample("odinws_offset_resets_total", reason="topic_changed")
        self.shard.delivery.deliver([self.event(o, "old", o) for o in range(100, 103)])
        self.shard.delivery.on_kafka_batch([self.event(o, "new", 1000 + o) for o in range(2)])
        self.shard.delivery.deliver([self.event(1, "new", 1001), self.event(2, "new", 1002),
                            self.event(103, "old", 103)])
        self.advance(0)
        seqs = [m["data"]["seq"] for m in client.messages() if m["type"] == "event"]
        self.assertEqual(seqs, [100, 101, 102, 1000, 1001, 1002])
        self.assertEqual(sample("odinws_offset_resets_total", reason="topic_changed") - resets, 1)
        self.assertTrue(self.audited("de-duplication marks reset"))
        self.assertEqual(self.shard.delivery.seen.marks[("odin.trades", 0)], ("new", 2))


class ShardLatencyTests(ShardTestCase):
    """The delivery latency, end to end and odinws's own share."""

    def test_ownShareLocalAndRelayed(self):
        """
        Each delivered event is observed end to end and in odinws's own
        share (from its consumed-at time), as local when this shard consumed
        it and as relayed when the hub brought it; undelivered events (no
        subscriber) and events without a consumed-at time are not.
        """
        client = self.connect()
        self.subscribe(client, "odin.token.ABC.trade")

        def counts():
            return (sample("odinws_delivery_latency_seconds_count"),
                    sample("odinws_own_latency_seconds_count", path="local"),
                    sample("odinws_own_latency_seconds_count", path="relayed"))
        before = counts()
        now = time.time()

        def ev(offset, token="ABC", consumed=now):
            return Event.build(token, "trade", b"1", int(now * 1000) - 5, "odin.trades", 0,
                               offset, epoch="e", consumed=consumed)
        self.shard.delivery.on_kafka_batch([ev(0), ev(1), ev(2, token="NOBODY")])
        self.shard.delivery.deliver([ev(3), ev(4, consumed=0.0)])
        after = counts()
        self.assertEqual([a - b for a, b in zip(after, before)], [4, 2, 1])
