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


def got(case: ShardTestCase, client) -> list[int]:
    """The events C{client} was sent since the last call."""
    case.advance(0)
    return [m["data"]["o"] for m in client.messages() if m["type"] == "event"]


class WarmGateTests(SynchronousTestCase):
    """The gate alone, with a plain dict of marks."""

    def setUp(self):
        self.marks: dict = {}
        self.past: list[Event] = []
        # Started at 0: every event is of the present.
        self.gate = WarmGate(self.marks, self.past.extend, 0)
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
        return got(self, client)

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


class NothingWarmedTests(ShardTestCase):
    """The warm-up ends without having handed a partition over (out of time, failed)."""

    settings = {"kafka__topics": {TOPIC: "trade"}}

    def test_the_past_by_time_then_live(self):
        """
        The re-read that waited, and what the consumer re-reads after, were
        produced before the shard started: not live, kept for recovery; from
        the partition's first event produced since, everything is live.
        """
        self.shard.delivery.gate.close()
        client = self.connect()
        self.subscribe(client, "odin.token.*.trade")
        past = self.shard.backfill.started_ms - 1000
        self.shard.delivery.on_kafka_batch([event(o, ts=past) for o in range(0, 4)])
        self.shard._warmed(WarmupReport(WarmupState.FAILED, 0, 0, 0, 0.1))
        self.shard.delivery.on_kafka_batch([event(o, ts=past) for o in range(4, 6)])
        self.assertEqual(got(self, client), [])
        self.shard.delivery.on_kafka_batch([event(6), event(7, ts=past)])
        self.assertEqual(got(self, client), [6, 7])
        replayed, _ = self.shard.history.replay({(TOPIC, 0): ("ep1", 1)}, [("*", "trade")])
        self.assertEqual([e.offset for e in replayed or []], [2, 3, 4, 5, 6, 7])


class WholeNodeRestartTests(OneShardRereadTests):
    """
    A shard of a node of two restarted with the whole node: the hub starts
    empty, so no mark is known, and what another shard consumed and relays
    (its re-read is relayed whole) waits for this shard's warm-up too.
    """

    settings = {"kafka__topics": {TOPIC: "trade"}, "shards": 2}

    def test_relayed_reread_waits_for_the_warmup(self):
        """
        The hub's marks are empty; another shard relays offsets 0-7 before
        this shard's warm-up handed the partition over (read through 5): a
        subscriber here gets 6 and 7 once it has, none of 0-5.
        """
        self.shard.delivery.hold()
        self.shard.delivery.gate.close()
        self.shard.delivery.marks_known(b"[]")
        client = self.connect()
        self.subscribe(client, "odin.token.*.trade")
        self.shard.delivery.deliver([event(o) for o in range(0, 8)])
        self.assertEqual(self.got(client), [])
        self.warmed(range(0, 6), through=5)
        self.assertEqual(self.got(client), [6, 7])
