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
from odin_ws.shard.kafka.warmread import WarmedPartition, WarmupReport, WarmupState
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


class LatePartitionGateTests(SynchronousTestCase):
    """The gate alone, once the warm-up has ended: partitions first seen later."""

    def setUp(self):
        self.marks: dict = {(TOPIC, 0): ("ep1", 9)}
        self.past: list[Event] = []
        self.gate = WarmGate(self.marks, self.past.extend, 1000)
        self.asked: list[set] = []
        self.gate.warm_late = self.asked.append
        self.taken: list[list[tuple[int, int]]] = []
        self.gate.close()
        self.gate.open()

    def take(self, events):
        self.taken.append([(e.partition, e.offset) for e in events])

    def test_late_partition_waits_for_its_own_warmup(self):
        """
        A partition without a mark in a batch after the warm-up ended waits
        (its later batches too) and its warm-up is asked for once; the
        partitions with a mark go at once; once it is warmed, it goes on.
        """
        first = self.gate.admit([event(10), event(3, 1, 2000), event(11)], self.take)
        second = self.gate.admit([event(4, 1, 2000)], self.take)
        self.assertEqual(self.taken, [[(0, 10), (0, 11)]])
        self.assertEqual(self.asked, [{(TOPIC, 1)}])
        self.assertNoResult(first)
        self.gate.warmed(TOPIC, 1)
        self.assertEqual(self.taken[1:], [[(1, 3)], [(1, 4)]])
        self.successResultOf(first)
        self.successResultOf(second)

    def test_late_partition_with_nothing_handed_over_goes_by_time(self):
        """
        Its warm-up ended without handing it over: what was produced before
        the shard started is the past (kept, not taken), then live.
        """
        self.gate.admit([event(1, 1, 500), event(2, 1, 600)], self.take)
        self.gate.admit([event(3, 1, 700), event(4, 1, 1500)], self.take)
        self.gate.late_done({(TOPIC, 1)})
        self.assertEqual(self.taken, [[(1, 4)]])
        self.assertEqual([e.offset for e in self.past], [1, 2, 3])
        self.marks[(TOPIC, 1)] = ("ep1", 4)     # as the delivery path's de-duplication sets it
        self.gate.admit([event(5, 1, 800)], self.take)
        self.assertEqual(self.taken[-1], [(1, 5)])
        self.assertEqual(len(self.asked), 1)

    def test_without_a_warmup_late_partitions_go_by_time(self):
        """No one to warm it (no warm_late): the past by time at once."""
        self.gate.warm_late = None
        self.gate.admit([event(1, 1, 500), event(2, 1, 1500)], self.take)
        self.assertEqual((self.taken, [e.offset for e in self.past]), ([[(1, 2)]], [1]))

    def test_without_any_warmup_nothing_waits(self):
        """A shard that ran no warm-up (warmup_timeout 0) takes every batch at once, as before."""
        gate = WarmGate({}, self.past.extend, 1000)
        gate.warm_late = self.asked.append
        self.assertIsNone(gate.admit([event(1, 1, 500)], self.take))
        self.assertEqual((self.taken, self.asked), ([[(1, 1)]], []))

    def test_stopped_nothing_waits(self):
        """A stopping shard's gate lets what waits go, and waits for nothing after."""
        self.gate.admit([event(1, 1, 1500)], self.take)
        self.gate.stop()
        self.gate.admit([event(1, 2, 1500)], self.take)
        self.assertEqual(self.taken, [[(1, 1)], [(2, 1)]])
        self.assertEqual(len(self.asked), 1)


class RereadCase(ShardTestCase):
    """A shard whose consumer re-reads a partition, and what its warm-up reads back."""

    settings = {"kafka__topics": {TOPIC: "trade"}}

    def got(self, client) -> list[int]:
        return got(self, client)

    def warmed(self, offsets: range, through: int, partition: int = 0) -> None:
        past = self.shard.backfill.started_ms - 1000
        self.shard._backfill(WarmedPartition(TOPIC, partition, "ep1", offsets[0], through,
                                             [event(o, partition, past) for o in offsets]))


class OneShardRereadTests(RereadCase):
    """
    A shard of a node of one (no hub marks ever) whose consumer re-reads a
    partition from an old commit while the warm-up still runs.
    """

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

    def test_reread_of_a_partition_handed_over_with_its_position_only(self):
        """
        The warm-up had nothing to read of the partition (nothing young
        enough): handed over with its position only (through 5), the re-read
        at or below it is not live, what follows is. Nothing there to
        relay whole: no re-read bookkeeping is kept for it.
        """
        self.shard.delivery.gate.close()
        client = self.connect()
        self.subscribe(client, "odin.token.*.trade")
        self.shard._backfill(WarmedPartition(TOPIC, 0, "ep1", 6, 5, []))
        self.assertFalse(self.shard.backfill.rereading([event(3)]))
        self.shard.delivery.on_kafka_batch([event(o) for o in range(0, 8)])
        self.assertEqual(self.got(client), [6, 7])

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


class LatePartitionTests(RereadCase):
    """
    A partition the group gives this shard after its warm-up ended, with no
    mark (nothing young enough was read back, the warm-up failed, a
    partition added, the node's other shard died), re-read from an old commit.
    """

    def setUp(self):
        super().setUp()
        self.asked: list[set] = []
        self.shard.delivery.gate.warm_late = self.asked.append
        self.shard.delivery.gate.close()
        self.shard._warmed(WarmupReport(WarmupState.DONE, 0, 0, 0, 0.1))

    def test_late_reread_is_not_live(self):
        """
        Offsets 0-11 re-read (delivered before the restart) wait for the
        partition's own warm-up (read through 11): none reaches a
        subscriber as live, what follows does (before, all of 0-11 did).
        """
        client = self.connect()
        self.subscribe(client, "odin.token.*.trade")
        self.shard.delivery.on_kafka_batch([event(o) for o in range(0, 12)])
        self.assertEqual((self.got(client), self.asked), ([], [{(TOPIC, 0)}]))
        self.warmed(range(0, 10), through=11)
        self.shard._late_warmed({(TOPIC, 0)}, WarmupReport(WarmupState.DONE, 10, 1, 0, 0.1))
        self.shard.delivery.on_kafka_batch([event(o) for o in range(12, 14)])
        self.assertEqual(self.got(client), [12, 13])
        replayed, _ = self.shard.history.replay({(TOPIC, 0): ("ep1", 1)}, [("*", "trade")])
        # (10 and 11 were read through but are no events: no record there.)
        self.assertEqual([e.offset for e in replayed or []], [*range(2, 10), 12, 13])

    def test_late_relayed_reread_is_not_live(self):
        """
        The same re-read relayed by another shard (which relays a re-read
        whole) waits for this shard's warm-up of the partition too.
        """
        client = self.connect()
        self.subscribe(client, "odin.token.*.trade")
        self.shard.delivery.deliver([event(o) for o in range(0, 8)])
        self.assertEqual(self.got(client), [])
        self.warmed(range(0, 6), through=5)
        self.shard._late_warmed({(TOPIC, 0)}, WarmupReport(WarmupState.DONE, 6, 1, 0, 0.1))
        self.assertEqual(self.got(client), [6, 7])

    def test_late_warmup_out_of_time_goes_by_time(self):
        """
        The partition's warm-up hands nothing over (out of time, failed):
        the re-read produced before the shard started is kept, not live;
        from the first event produced since, live.
        """
        client = self.connect()
        self.subscribe(client, "odin.token.*.trade")
        past = self.shard.backfill.started_ms - 1000
        self.shard.delivery.on_kafka_batch([event(o, ts=past) for o in range(0, 4)] + [event(4)])
        self.shard._late_warmed({(TOPIC, 0)}, WarmupReport(WarmupState.FAILED, 0, 0, 0, 0.1))
        self.assertEqual(self.got(client), [4])
