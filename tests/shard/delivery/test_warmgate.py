"""
The warm gate (L{odin_ws.shard.delivery.warmgate}): batches of partitions
the shard knows no mark for wait for their warm-up, so a re-read from an
old commit on a node of one shard (or after a whole-node restart) reaches
clients as history, not as live events.
"""

from __future__ import annotations

import time

from twisted.trial.unittest import SynchronousTestCase

from odin_ws.common.events import Event
from odin_ws.shard.delivery.warmgate import WarmGate
from odin_ws.shard.kafka.warmup import WarmedPartition, WarmupReport, WarmupState
from tests.helpers import ShardTestCase

TOPIC = "odin.trades"


def event(offset: int, partition: int = 0, ts: int | None = None) -> Event:
    ts = int(time.time() * 1000) if ts is None else ts
    return Event.build("A", "trade", b'{"o":%d}' % offset, ts, TOPIC, partition, offset, "ep1")


class WarmGateTests(SynchronousTestCase):
    """The gate alone, with a plain dict of marks."""

    def setUp(self):
        self.marks: dict = {}
        self.gate = WarmGate(self.marks)
        self.taken: list[list[tuple[int, int]]] = []

    def take(self, events):
        self.taken.append([(e.partition, e.offset) for e in events])

    def test_open_gate_takes_at_once(self):
        """While no warm-up runs, every batch is taken whole, at once."""
        self.assertIsNone(self.gate.admit([event(1), event(2, 1)], self.take))
        self.assertEqual(self.taken, [[(0, 1), (1, 2)]])

    def test_partitions_without_a_mark_wait_for_their_warmup(self):
        """
        Closed, a partition without a mark waits (in order, its later
        batches too) until it is warmed; one with a mark goes at once; the
        batch counts as taken only when every part was.
        """
        self.marks[(TOPIC, 1)] = ("ep1", 0)
        self.gate.close()
        first = self.gate.admit([event(5), event(7, 1), event(6)], self.take)
        second = self.gate.admit([event(7)], self.take)
        self.assertEqual(self.taken, [[(1, 7)]])
        self.assertEqual(self.gate.waiting(), 1)
        self.assertNoResult(first)
        self.gate.warmed(TOPIC, 0)
        self.assertEqual(self.taken, [[(1, 7)], [(0, 5), (0, 6)], [(0, 7)]])
        self.successResultOf(first)
        self.successResultOf(second)
        self.assertEqual(self.gate.waiting(), 0)

    def test_a_waiting_partition_stays_behind_its_first_batch(self):
        """
        A mark that appears while a partition's batches wait (a relayed
        event) does not let its later batches overtake the waiting ones.
        """
        self.gate.close()
        self.gate.admit([event(5)], self.take)
        self.marks[(TOPIC, 0)] = ("ep1", 9)
        self.gate.admit([event(6)], self.take)
        self.assertEqual(self.taken, [])
        self.gate.warmed(TOPIC, 0)
        self.assertEqual(self.taken, [[(0, 5)], [(0, 6)]])

    def test_end_of_warmup_releases_everything(self):
        """When the warm-up ends, every waiting partition goes on and nothing waits after."""
        self.gate.close()
        self.gate.admit([event(1), event(2, 1)], self.take)
        self.gate.open()
        self.assertEqual(sorted(self.taken), [[(0, 1)], [(1, 2)]])
        self.assertFalse(self.gate.closed)
        self.gate.admit([event(3, 2)], self.take)
        self.assertEqual(self.taken[-1], [(2, 3)])


class OneShardRereadTests(ShardTestCase):
    """
    A shard of a node of one (no hub marks ever) whose consumer re-reads a
    partition from an old commit while the warm-up still runs.
    """

    settings = {"kafka__topics": {TOPIC: "trade"}}

    def got(self, client) -> list[int]:
        self.advance(0)
        return [m["data"]["o"] for m in client.messages() if m["type"] == "event"]

    def warmed(self, offsets: range, through: int, partition: int = 0) -> None:
        past = self.shard.backfill.started_ms - 1000
        self.shard._backfill(WarmedPartition(TOPIC, partition, "ep1", offsets[0], through,
                                             [event(o, partition, past) for o in offsets]))

    def test_reread_before_the_warmup_is_not_live(self):
        """
        The consumer re-reads offsets 0-11 (delivered before the kill) before
        the warm-up handed the partition over (it read 0-9 and through 11):
        a client subscribed now gets none of them live, only what follows;
        the other partition, warmed already, was live meanwhile.
        """
        self.shard.delivery.gate.close()
        client = self.connect()
        self.subscribe(client, "odin.token.*.trade")
        self.warmed(range(0, 3), through=2, partition=1)
        self.shard.delivery.on_kafka_batch([event(o) for o in range(0, 12)])
        self.shard.delivery.on_kafka_batch([event(3, 1)])
        self.assertEqual(self.got(client), [3])
        self.warmed(range(0, 10), through=11)
        self.shard.delivery.on_kafka_batch([event(o) for o in range(12, 14)])
        self.assertEqual(self.got(client), [12, 13])

    def test_reread_past_a_partition_with_nothing_to_warm(self):
        """
        A partition the warm-up hands nothing over for waits until the
        warm-up ends, then goes on as live delivery would have.
        """
        self.shard.delivery.gate.close()
        client = self.connect()
        self.subscribe(client, "odin.token.*.trade")
        self.shard.delivery.on_kafka_batch([event(4, 1)])
        self.assertEqual(self.got(client), [])
        self.shard._warmed(WarmupReport(WarmupState.DONE, 0, 0, 0, 0.1))
        self.assertEqual(self.got(client), [4])
