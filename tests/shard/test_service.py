"""
The shard service's relay of what it consumed (L{odin_ws.shard.service.Shard._publish}):
through the parent's hub to the other shards, and not at all on a node of one shard;
and what a (re)started shard learns from the hub before it delivers what it consumes.
"""

from __future__ import annotations

import time

from twisted.internet.defer import Deferred, succeed

from odin_ws.common import commands
from odin_ws.common.events import Event, decode_batch
from odin_ws.common.highwater import HighWater
from odin_ws.shard.kafka.warmread import WarmedPartition
from tests.helpers import ShardTestCase


class RecordingLink:
    """The parent link's C{callRemote}: records each command and its arguments."""

    def __init__(self):
        self.calls: list[tuple[type, dict]] = []

    def callRemote(self, command, **kwargs):
        self.calls.append((command, kwargs))
        return succeed({})


def events(count: int, first: int = 0, epoch: str = "") -> list[Event]:
    now = int(time.time() * 1000)
    return [Event.build("ABC", "trade", b'{"seq":%d}' % i, now, "odin.trades", 0, i, epoch)
            for i in range(first, count)]


class RegisteringLink(RecordingLink):
    """A parent link whose answer to Register the test gives (L{registered})."""

    def __init__(self):
        super().__init__()
        self.registered: Deferred = Deferred()

    def callRemote(self, command, **kwargs):
        if command is commands.Register:
            self.calls.append((command, kwargs))
            return self.registered
        return super().callRemote(command, **kwargs)


def relayed_marks(batch: list[Event]) -> bytes:
    """The hub's marks once it relayed C{batch}."""
    hub = HighWater("hub")
    hub.fresh(batch)
    return hub.exported()


class RelayTests(ShardTestCase):
    """A node of several shards relays each consumed batch through the hub."""

    settings = {"shards": 2}

    def test_consumedBatchIsPublished(self):
        """
        A batch this shard consumed goes to the parent as one Publish of the
        encoded batch, and the consumer waits for its answer (the Deferred).
        """
        link = self.shard.link = RecordingLink()
        taken = self.shard.delivery.on_kafka_batch(events(3))
        self.assertEqual([c for c, _ in link.calls], [commands.Publish])
        self.assertEqual([e.offset for e in decode_batch(link.calls[0][1]["batch"])], [0, 1, 2])
        self.assertIsNotNone(taken)


class SingleShardRelayTests(ShardTestCase):
    """A node of one shard has no one to relay to."""

    settings = {"shards": 1}

    def test_noRoundTripThroughTheParent(self):
        """
        With one shard a consumed batch is delivered and taken at once: no
        Publish to the parent, nothing for the consumer to wait for.
        """
        link = self.shard.link = RecordingLink()
        client = self.connect()
        self.subscribe(client, "odin.token.ABC.trade")
        taken = self.shard.delivery.on_kafka_batch(events(2))
        self.advance(0)
        self.assertIsNone(taken)
        self.assertEqual(link.calls, [])
        self.assertEqual([m["data"]["seq"] for m in client.messages() if m["type"] == "event"],
                         [0, 1])


class RestartedShardTests(ShardTestCase):
    """
    A shard that (re)starts on a node of several learns from the hub what
    the node delivered before it came, before it delivers anything itself:
    the group may hand it a partition that it then re-reads from an older
    commit (the restarted shard of issue 22's test_kill_shard).
    """

    settings = {"shards": 3}

    def setUp(self):
        super().setUp()
        self.link = RegisteringLink()
        self.shard.link_made(self.link)
        self.client = self.connect()
        self.subscribe(self.client, "odin.token.ABC.trade")

    def seqs(self) -> list[int]:
        self.advance(0)
        return [m["data"]["seq"] for m in self.client.messages() if m["type"] == "event"]

    def published(self) -> list[int]:
        return [e.offset for c, kw in self.link.calls if c is commands.Publish
                for e in decode_batch(kw["batch"])]

    def test_reReadOfRelayedEventsNotDeliveredAgain(self):
        """
        The hub relayed offsets 0-9 before this shard registered; the group
        then has this shard re-read the partition from offset 0: its client
        gets only what follows (10, 11), and only that is published.
        """
        self.link.registered.callback({"marks": relayed_marks(events(10, epoch="e1"))})
        taken = self.shard.delivery.on_kafka_batch(events(12, epoch="e1"))
        self.assertEqual(self.seqs(), [10, 11])
        self.assertEqual(self.published(), [10, 11])
        self.successResultOf(taken)

    def test_consumedBeforeTheMarksIsHeld(self):
        """
        A batch consumed before the hub answered is neither delivered nor
        taken (its offsets are not stored) until the marks are known; then it
        goes on, without what the hub had relayed.
        """
        taken = self.shard.delivery.on_kafka_batch(events(6, epoch="e1"))
        self.assertEqual(self.seqs(), [])
        self.assertNoResult(taken)
        self.link.registered.callback({"marks": relayed_marks(events(4, epoch="e1"))})
        self.assertEqual(self.seqs(), [4, 5])
        self.successResultOf(taken)

    def test_readBackWaitsForTheMarks(self):
        """
        What the warm-up read back joins only once the marks are known, and
        what they cover is the past (history, not sent); past them it is new.
        """
        self.shard._backfill(WarmedPartition("odin.trades", 0, "e1", 0, 5,
                                             events(6, epoch="e1")))
        self.assertEqual(self.seqs(), [])
        self.assertTrue(self.shard.history.loading())
        self.link.registered.callback({"marks": relayed_marks(events(4, epoch="e1"))})
        self.assertEqual(self.seqs(), [4, 5])
        self.assertEqual(self.shard.delivery.seen.marks[("odin.trades", 0)], ("e1", 5))

    def test_failedRegisterReleases(self):
        """Without an answer (the channel broke) what was held goes on, and the failure is logged."""
        taken = self.shard.delivery.on_kafka_batch(events(2, epoch="e1"))
        self.link.registered.errback(RuntimeError("channel closed"))
        self.assertEqual(self.seqs(), [0, 1])
        self.successResultOf(taken)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class RestartedSingleShardTests(ShardTestCase):
    """A node of one shard has no hub marks to wait for."""

    settings = {"shards": 1}

    def test_nothingHeld(self):
        """Its consumed batches are delivered at once, before Register is answered."""
        link = RegisteringLink()
        self.shard.link_made(link)
        client = self.connect()
        self.subscribe(client, "odin.token.ABC.trade")
        self.assertIsNone(self.shard.delivery.on_kafka_batch(events(2)))
        self.advance(0)
        self.assertEqual([m["data"]["seq"] for m in client.messages() if m["type"] == "event"],
                         [0, 1])
