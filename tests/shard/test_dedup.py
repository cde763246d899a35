"""
The shard's de-duplication of events (its own consumption and the hub's
relay): re-reads are dropped, a new incarnation of a topic is not.
"""

from __future__ import annotations

from odin_ws.common.events import Event
from tests.helpers import ShardTestCase, sample


class ShardDedupTests(ShardTestCase):

    def event(self, offset: int, epoch: str, seq: int, partition: int = 0) -> Event:
        return Event.build("ABC", "trade", b'{"seq":%d}' % seq, 1, "odin.trades", partition,
                           offset, epoch=epoch)

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
        self.shard.deliver([self.event(o, "old", o) for o in range(100, 103)])
        self.shard.on_kafka_batch([self.event(o, "new", 1000 + o) for o in range(0, 2)])
        self.shard.deliver([self.event(1, "new", 1001), self.event(2, "new", 1002),
                            self.event(103, "old", 103)])
        self.advance(0)
        seqs = [m["data"]["seq"] for m in client.messages() if m["type"] == "event"]
        self.assertEqual(seqs, [100, 101, 102, 1000, 1001, 1002])
        self.assertEqual(sample("odinws_offset_resets_total", reason="topic_changed") - resets, 1)
        self.assertTrue(self.audited("de-duplication marks reset"))
        self.assertEqual(self.shard.seen.marks[("odin.trades", 0)], ("new", 2))
