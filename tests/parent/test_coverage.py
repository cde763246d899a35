"""
Tests for L{odin_ws.parent.coverage}: which partitions no shard of the node
holds, from the shards' reports, and when one shard is asked to rejoin the
consumer group (a fake clock and fake shard handles). On Apache Kafka:
C{tests.integration.test_recovery.PartitionsAddedTests}.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from odin_ws.common import commands
from odin_ws.common.events import Partition
from odin_ws.parent.coverage import CHECK_EVERY, GroupCoverage, unassigned
from odin_ws.parent.health import Health
from tests.helpers.cases import make_settings


def report(assigned: list[int], partitions: int = 4, state: str = "running") -> dict[str, Any]:
    """A shard's Kafka status: topic C{t} with C{partitions}, C{assigned} held here."""
    return {"state": state, "connected": state == "running",
            "assigned": [Partition("t", p).label() for p in assigned],
            "topics": {"t": {"partitions": partitions, "assigned": assigned}}}


class FakeShard:
    """A shard handle: its last report, and the commands it was sent."""

    def __init__(self, index: int, kafka: dict[str, Any] | None, alive: bool = True):
        self.index = index
        self.alive = alive
        self.stalled = False
        self.status: dict[str, Any] = {"kafka": kafka}
        self.calls: list[Any] = []

    def call(self, command: Any, **kw: Any) -> Deferred:
        self.calls.append(command)
        return succeed({"rejoining": True})

    def as_health(self) -> dict[str, Any]:
        return {"index": self.index, "alive": self.alive, "accepting": self.alive,
                "connections": 0, "capacity": 100, "kafka": self.status["kafka"]}


class UnassignedTests(SynchronousTestCase):

    def test_union_of_the_shards(self):
        """
        The partitions of each topic (its largest count any shard knows)
        that no shard holds; a shard's report without topics adds nothing.
        """
        reports = [report([0], partitions=4), report([1], partitions=3), {}]
        self.assertEqual(unassigned(reports), {Partition("t", 2), Partition("t", 3)})
        self.assertEqual(unassigned([report([0, 1]), report([2, 3])]), frozenset())


class GroupCoverageTests(SynchronousTestCase):

    def setUp(self):
        self.clock = Clock()
        self.shards = [FakeShard(0, report([0])), FakeShard(1, report([1]))]
        self.settings = make_settings(kafka__unreachable_grace=15.0)
        self.coverage = GroupCoverage(self.clock, self.settings, lambda: self.shards)
        self.coverage.startService()
        self.addCleanup(self.coverage.stopService)

    def advance(self, seconds: float) -> None:
        for _ in range(int(seconds / CHECK_EVERY)):
            self.clock.advance(CHECK_EVERY)

    def test_held_by_none_past_grace_rejoins_once(self):
        """
        Partitions held by no shard for the grace (with every shard
        consuming) make the first shard rejoin, once; the next rejoin waits
        another grace and asks the next shard. Within the grace, nothing.
        """
        self.advance(14)
        self.assertEqual([s.calls for s in self.shards], [[], []])
        self.advance(1)
        self.assertEqual([s.calls for s in self.shards], [[commands.Rejoin], []])
        self.advance(14)
        self.assertEqual(self.coverage.rejoins, 1)
        self.advance(1)
        self.assertEqual([s.calls for s in self.shards], [[commands.Rejoin], [commands.Rejoin]])

    def test_assigned_again_starts_over(self):
        """
        Partitions held again before the grace (a rebalance that finished)
        are forgotten: held by none again later, they wait a whole grace.
        """
        self.advance(10)
        self.shards[0].status["kafka"] = report([0, 2, 3])
        self.advance(1)
        self.assertEqual(self.coverage.unassigned(), {})
        self.shards[0].status["kafka"] = report([0])
        self.coverage.unassigned()
        self.advance(14)
        self.assertEqual(self.coverage.rejoins, 0)
        self.advance(1)
        self.assertEqual(self.coverage.rejoins, 1)

    def test_no_rejoin_while_a_shard_is_down(self):
        """
        A shard down (or whose consumer does not reach the brokers) gets its
        own partitions back when it returns: no rejoin meanwhile, though the
        partitions are reported held by no shard.
        """
        self.shards[1].alive = False
        self.advance(30)
        self.assertEqual(self.coverage.rejoins, 0)
        self.assertEqual(sorted(self.coverage.unassigned()),
                         [Partition("t", p) for p in (1, 2, 3)])
        self.shards[1].alive = True
        self.shards[1].status["kafka"] = report([1], state="retrying")
        self.advance(30)
        self.assertEqual(self.coverage.rejoins, 0)

    def test_grace_counts_while_every_shard_consumes(self):
        """
        Partitions held by none while the shards do not reach the brokers
        (an outage: the group re-forms when they answer) wait a whole
        grace of every shard consuming before a rejoin.
        """
        for shard in self.shards:
            shard.status["kafka"]["state"] = "retrying"
        self.advance(30)
        for shard in self.shards:
            shard.status["kafka"]["state"] = "running"
        self.advance(14)
        self.assertEqual(self.coverage.rejoins, 0)
        self.advance(2)
        self.assertEqual(self.coverage.rejoins, 1)

    def test_every_partition_held(self):
        """Every partition held by some shard: nothing unassigned, never a rejoin."""
        self.shards[1].status["kafka"] = report([1, 2, 3])
        self.advance(60)
        self.assertEqual((self.coverage.unassigned(), self.coverage.rejoins), ({}, 0))

    def test_health_names_them_past_grace(self):
        """
        /health stays 200 (the other partitions are delivered) and, past the
        grace, says degraded partitions_unassigned and lists them; within
        it, nothing.
        """
        health = Health(self.settings, lambda: self.shards, Door(), coverage=self.coverage)
        self.advance(5)
        status, body = health()
        self.assertEqual((status, body["degraded"], body["unassigned_partitions"]), (200, [], []))
        self.advance(10)
        status, body = health()
        self.assertEqual((status, body["degraded"], body["unassigned_partitions"]),
                         (200, ["partitions_unassigned"], ["t[2]", "t[3]"]))

    def test_health_names_stalled_partitions(self):
        """
        Partitions a shard holds and reports stalled (records to read, not
        read: shard/kafka/progress.py) make /health say degraded
        partitions_stalled and list them, still 200 (the others are
        delivered); none reported, none listed.
        """
        self.shards[1].status["kafka"] = report([1, 2, 3])
        health = Health(self.settings, lambda: self.shards, Door(), coverage=self.coverage)
        status, body = health()
        self.assertEqual((status, body["degraded"], body["stalled_partitions"]), (200, [], []))
        self.shards[1].status["kafka"]["stalled"] = {"t[3]": 12.0, "t[1]": 11.0}
        status, body = health()
        self.assertEqual((status, body["degraded"], body["stalled_partitions"]),
                         (200, ["partitions_stalled"], ["t[1]", "t[3]"]))


class Door:
    """The node's door as /health reads it: open, started, not overloaded."""

    accepting, starting, overloaded = True, False, False
