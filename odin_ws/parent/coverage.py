"""
Partitions of the subscribed topics that no shard of the node holds
(L{GroupCoverage}), and the rejoin that makes the node's consumer group
assign them.

A node is one consumer group, and its shards are its only members: every
partition should be held by one of them. Some are not, for good, when:

  - static members (C{kafka.static_membership}) restarted within their
    session get their old assignment back without a rebalance (KIP-345),
    so partitions added to a topic while the node was down are assigned to
    nobody until some other rebalance (about half the restarts on Apache
    Kafka 4.4);
  - a group re-formed on a replaced broker (session timeouts, C{SESSTMOUT})
    leaves some partitions unassigned.

The parent sees it from what the shards report anyway (their C{Stats}):
each shard's assigned partitions and each topic's partition count from its
consumer's own metadata. Nothing here asks the group coordinator: an admin
request to it (C{DescribeConsumerGroups}) aborts the process in librdkafka
2.16 when the coordinator's connection drops during the call (issues 4605
and 3663; it killed a shard in a leader-kill run). Partitions held by no
shard for C{kafka.unreachable_grace} (a rebalance takes less) make the node
ask one shard (L{commands.Rejoin}) to leave the group and join again, which
makes the group assign every partition anew; the next rejoin waits as long
again, and asks the next shard. While a shard is down or not running its
consumer, its partitions wait for it (static membership gives them back
without a rebalance): no rejoin. /health names the partitions
(L{odin_ws.parent.health}).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from odin_ws.common import commands
from odin_ws.common.events import Partition
from odin_ws.common.settings import Settings

log = Logger()

#: Seconds between two looks at the shards' reports.
CHECK_EVERY = 1.0


class ShardView(Protocol):
    """What the coverage reads of a shard (L{odin_ws.parent.shardhandle.ShardHandle})."""

    @property
    def index(self) -> int: ...
    @property
    def alive(self) -> bool: ...
    @property
    def stalled(self) -> bool: ...
    @property
    def status(self) -> dict[str, Any]: ...

    def call(self, command: Any, **kw: Any) -> Deferred: ...


def unassigned(reports: Iterable[dict[str, Any]]) -> frozenset[Partition]:
    """
    The partitions that no report holds, of the topics the reports know
    (each shard's C{kafka.topics}: a topic's partition count, the largest
    any shard's metadata says, and the partitions assigned to it).
    """
    counts: dict[str, int] = {}
    held: set[Partition] = set()
    for report in reports:
        for topic, layout in (report.get("topics") or {}).items():
            counts[topic] = max(counts.get(topic, 0), layout.get("partitions") or 0)
            held.update(Partition(topic, p) for p in layout.get("assigned") or ())
    return frozenset(Partition(topic, p) for topic, n in counts.items()
                     for p in range(n)) - held


class GroupCoverage(Service):
    """
    Watches that every partition is held by a shard, and has one shard
    rejoin the group when some are not for longer than the grace.

    @param reactor: the clock.
    @param settings: the node's settings (C{kafka.unreachable_grace}).
    @param shards: returns the current shard handles.
    """

    def __init__(self, reactor: Any, settings: Settings, shards: Callable[[], Sequence[ShardView]]):
        self._reactor = reactor
        self._settings = settings
        self._shards = shards
        # Partition -> reactor time it was first seen held by no shard.
        self._since: dict[Partition, float] = {}
        self._rejoined_at: float | None = None
        # Since when every shard has been consuming (None: not now).
        self._consuming_since: float | None = None
        self._next_shard = 0
        self._loop: LoopingCall | None = None
        #: Rejoins asked so far.
        self.rejoins = 0

    def reconfigure(self, settings: Settings) -> None:
        self._settings = settings

    def startService(self) -> None:
        Service.startService(self)
        self._loop = LoopingCall(self.check)
        self._loop.clock = self._reactor
        self._loop.start(CHECK_EVERY, now=True)

    def stopService(self) -> None:
        Service.stopService(self)
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    def unassigned(self) -> dict[Partition, float]:
        """The partitions no alive shard holds now, each with the seconds it has been so."""
        alive = [s for s in self._shards() if s.alive]
        now_missing = unassigned((s.status.get("kafka") or {}) for s in alive)
        now = self._reactor.seconds()
        self._since = {p: self._since.get(p, now) for p in now_missing}
        return {p: now - since for p, since in self._since.items()}

    def check(self) -> None:
        """
        Look once: partitions held by no shard for the grace, with every
        shard alive and consuming, make one shard rejoin (at most once per
        grace).
        """
        missing = self.unassigned()
        grace = self._settings.kafka.unreachable_grace
        now = self._reactor.seconds()
        shards = self._shards()
        if not shards or not all(_consuming(s) for s in shards):
            # A shard that is down gets its own partitions back when it
            # returns; a group without its brokers re-forms when they answer.
            self._consuming_since = None
            return
        if self._consuming_since is None:
            self._consuming_since = now
        # Held by none for the grace while every shard consumed (after an
        # outage the group re-forms first).
        waited = min(now - self._consuming_since, grace)
        stuck = sorted(p for p, seconds in missing.items() if min(seconds, waited) >= grace)
        if not stuck or (self._rejoined_at is not None and now - self._rejoined_at < grace):
            return
        shard = shards[self._next_shard % len(shards)]
        self._next_shard += 1
        self._rejoined_at = now
        self.rejoins += 1
        labels = ", ".join(p.label() for p in stuck)
        log.warn("Kafka partitions held by no shard for {seconds:.0f}s: {partitions}; "
                 "shard {shard} rejoins the consumer group so that it assigns them",
                 seconds=max(missing[p] for p in stuck), partitions=labels, shard=shard.index)
        shard.call(commands.Rejoin).addCallbacks(
            lambda answer: _rejoin_answered(shard.index, answer),
            lambda failure: _rejoin_failed(shard.index, failure))


def _consuming(shard: ShardView) -> bool:
    """The shard is alive, reporting, and its consumer reaches the brokers."""
    kafka = shard.status.get("kafka") or {}
    return (shard.alive and not shard.stalled and kafka.get("state") == "running"
            and bool(kafka.get("connected")))


def _rejoin_answered(index: int, answer: dict[str, Any]) -> None:
    if not answer.get("rejoining"):
        log.warn("shard {shard} could not rejoin the consumer group: its consumer is not "
                 "running", shard=index)


def _rejoin_failed(index: int, failure: Failure) -> None:
    log.warn("shard {shard} was not asked to rejoin the consumer group: {error}",
             shard=index, error=failure.getErrorMessage())
