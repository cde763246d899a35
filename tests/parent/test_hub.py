"""
Tests for L{odin_ws.parent.hub}.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.protocols import amp
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase

from odin_ws.common.commands import Deliver
from odin_ws.common.events import Event, decode_batch, encode_batch
from odin_ws.common.logs import AUDIT_NAMESPACE
from odin_ws.parent.hub import Hub
from tests.helpers import sample


def event(partition: int, offset: int, size: int = 8, topic: str = "odin.trades",
          epoch: str = "") -> Event:
    return Event.build("ABC", "trade", b'"' + b"x" * size + b'"', ts=1, topic=topic,
                       partition=partition, offset=offset, epoch=epoch)


def batch(partition: int, offsets, size: int = 8, epoch: str = "") -> bytes:
    return encode_batch([event(partition, o, size, epoch=epoch) for o in offsets])




class Shard:
    """
    A shard's Deliver as the hub sees it: records batches and answers at
    once, or holds the answers until the test releases or fails them.
    """

    def __init__(self, answer: bool = True):
        self.answer = answer
        self.batches: list[bytes] = []
        self.pending: list[Deferred] = []

    def __call__(self, data: bytes) -> Deferred:
        self.batches.append(data)
        d: Deferred = Deferred()
        if self.answer:
            d.callback({})
        else:
            self.pending.append(d)
        return d

    def offsets(self) -> list[tuple[int, int]]:
        return [(e.partition, e.offset) for b in self.batches for e in decode_batch(b)]


class HubTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.hub = Hub(self.clock, max_event_bytes=1024, max_queue_batches=3)
        self.shards = {i: Shard() for i in range(3)}
        for i, shard in self.shards.items():
            self.hub.attach(i, shard)

    def test_relayToOthersNotSelf(self):
        """A batch published by one shard reaches every other shard once, not its source."""
        data = batch(0, [1, 2, 3])
        before = sample("odinws_hub_relayed_events_total")
        self.hub.publish(0, data)
        self.assertEqual(self.shards[0].batches, [])
        self.assertEqual(self.shards[1].batches, [data])
        self.assertEqual(self.shards[2].batches, [data])
        self.assertEqual(sample("odinws_hub_relayed_events_total") - before, 3)

    def test_unfilteredBatchForwardedAsIs(self):
        """When nothing is filtered out, the published bytes are relayed without re-encoding."""
        data = batch(0, [1, 2])
        self.hub.publish(0, data)
        self.assertIs(self.shards[1].batches[0], data)

    def test_republishedBatchIsDropped(self):
        """The same events published twice are relayed once and counted as duplicates."""
        before = sample("odinws_events_duplicate_total")
        self.hub.publish(0, batch(0, [1, 2]))
        self.hub.publish(0, batch(0, [1, 2]))
        self.assertEqual(self.shards[1].offsets(), [(0, 1), (0, 2)])
        self.assertEqual(sample("odinws_events_duplicate_total") - before, 2)

    def test_dedupeAcrossRebalance(self):
        """
        When a partition moves to another shard that re-reads overlapping
        offsets, every shard still gets each offset exactly once.
        """
        self.hub.publish(0, batch(4, range(5)))
        # After the rebalance shard 1 owns partition 4 and re-reads from 3.
        self.hub.publish(1, batch(4, range(3, 8)))
        self.assertEqual(self.shards[2].offsets(), [(4, o) for o in range(8)])
        self.assertEqual(self.shards[1].offsets(), [(4, o) for o in range(5)])
        self.assertEqual(self.shards[0].offsets(), [(4, o) for o in range(5, 8)])

    def test_newIncarnationResetsTheMark(self):
        """
        Offsets that restart below the mark under a new epoch (broker
        replaced, topic recreated) are relayed, not dropped as duplicates;
        the reset is counted and audited once per topic change; late events
        of the old epoch are then dropped, and the new epoch's re-reads are
        de-duplicated as usual.
        """
        resets = sample("odinws_offset_resets_total", reason="topic_changed")
        audited = []
        globalLogPublisher.addObserver(audited.append)
        self.addCleanup(globalLogPublisher.removeObserver, audited.append)
        self.hub.publish(0, batch(4, range(100, 103), epoch="old"))
        self.hub.publish(0, batch(5, range(50, 51), epoch="old"))
        self.hub.publish(0, batch(4, range(3), epoch="new"))
        self.hub.publish(0, batch(5, range(1), epoch="new"))
        self.hub.publish(1, batch(4, [102], epoch="old"))       # late, from the old log
        self.hub.publish(1, batch(4, range(1, 4), epoch="new"))  # re-read after a move
        self.assertEqual(self.shards[2].offsets(),
                         [(4, 100), (4, 101), (4, 102), (5, 50), (4, 0), (4, 1), (4, 2),
                          (5, 0), (4, 3)])
        self.assertEqual(sample("odinws_offset_resets_total", reason="topic_changed") - resets, 2)
        lines = [formatEvent(e) for e in audited if e.get("log_namespace") == AUDIT_NAMESPACE]
        self.assertEqual(len(lines), 1, lines)
        self.assertIn("hub: topic odin.trades changed (epoch old -> new", lines[0])
        self.assertIn("de-duplication marks reset", lines[0])

    def test_unknownEpochComparesOffsets(self):
        """
        An event whose consumer could not learn the topic's identity (epoch
        unknown) is de-duplicated by offset against any mark, and a mark
        made without an epoch takes the first known one without a reset.
        """
        resets = sample("odinws_offset_resets_total", reason="topic_changed")
        self.hub.publish(0, batch(4, range(3)))
        self.hub.publish(0, batch(4, range(3, 5), epoch="e1"))
        self.hub.publish(0, batch(4, range(2, 6)))
        self.hub.publish(0, batch(4, range(4, 7), epoch="e1"))
        self.assertEqual(self.shards[1].offsets(), [(4, o) for o in range(7)])
        self.assertEqual(sample("odinws_offset_resets_total", reason="topic_changed"), resets)

    def test_partitionsAndTopicsAreIndependent(self):
        """The same offset in another partition or topic is not a duplicate."""
        self.hub.publish(0, encode_batch([event(0, 5), event(1, 5), event(0, 5, topic="t2")]))
        self.assertEqual(len(decode_batch(self.shards[1].batches[0])), 3)

    def test_tooLargeRejected(self):
        """An event above max_event_bytes is not relayed and is counted; the rest are."""
        before = sample("odinws_hub_rejected_events_total", reason="too_large")
        self.hub.publish(0, encode_batch([event(0, 1), event(0, 2, size=2000), event(0, 3)]))
        self.assertEqual(self.shards[1].offsets(), [(0, 1), (0, 3)])
        self.assertEqual(sample("odinws_hub_rejected_events_total", reason="too_large") - before,
                         1)

    def test_malformedRejected(self):
        """A batch that does not decode is dropped whole and counted."""
        before = sample("odinws_hub_rejected_events_total", reason="malformed")
        self.hub.publish(0, batch(0, [1])[:-3])
        self.assertEqual(self.shards[1].batches, [])
        self.assertEqual(sample("odinws_hub_rejected_events_total", reason="malformed") - before,
                         1)

    def test_slowShardIsBoundedAndDoesNotBlockOthers(self):
        """
        A shard that never answers gets one Deliver in flight and a queue of
        max_queue_batches; older batches are dropped and counted, while the
        other shards receive everything.
        """
        slow = self.shards[1] = Shard(answer=False)
        self.hub.attach(1, slow)
        before = sample("odinws_hub_dropped_batches_total", shard="1")
        for offset in range(10):
            self.hub.publish(0, batch(0, [offset]))
        self.assertEqual(self.shards[2].offsets(), [(0, o) for o in range(10)])
        self.assertEqual(len(slow.batches), 1)
        self.assertEqual(self.hub.queued(1), 3)
        self.assertEqual(sample("odinws_hub_queue_batches", shard="1"), 3)
        self.assertEqual(sample("odinws_hub_dropped_batches_total", shard="1") - before, 6)

    def test_queueBoundedInBytes(self):
        """
        A shard that never answers holds at most max_queue_bytes queued
        even when that is far fewer than max_queue_batches: the oldest
        batches are dropped and counted; the newest is kept, and a single
        batch larger than the bound is still queued whole.
        """
        hub = Hub(self.clock, max_event_bytes=1 << 20, max_queue_batches=100,
                  max_queue_bytes=10_000)
        slow = Shard(answer=False)
        hub.attach(0, Shard())
        hub.attach(1, slow)
        size = len(batch(0, [0], size=3000))
        before = sample("odinws_hub_dropped_batches_total", shard="1")
        for offset in range(10):
            hub.publish(0, batch(0, [offset], size=3000))
        self.assertEqual(len(slow.batches), 1)
        self.assertEqual(hub.queued(1), 10_000 // size)
        self.assertLessEqual(hub.queued_bytes(1), 10_000)
        self.assertEqual(sample("odinws_hub_dropped_batches_total", shard="1") - before,
                         9 - 10_000 // size)
        hub.publish(0, batch(0, [10], size=20_000))
        self.assertEqual(hub.queued(1), 1)
        self.assertEqual(sample("odinws_hub_dropped_batches_total", shard="1") - before,
                         9)
        slow.pending.pop(0).callback({})
        self.assertEqual([e.offset for e in decode_batch(slow.batches[1])], [10])
        self.assertEqual(hub.queued_bytes(1), 0)

    def test_queuedBatchesMergedInOrder(self):
        """When the in-flight Deliver answers, the queued batches go as one Deliver, in order."""
        slow = self.shards[1] = Shard(answer=False)
        self.hub.attach(1, slow)
        for offset in range(4):
            self.hub.publish(0, batch(0, [offset]))
        slow.pending.pop(0).callback({})
        self.assertEqual(len(slow.batches), 2)
        self.assertEqual([e.offset for e in decode_batch(slow.batches[1])], [1, 2, 3])
        self.assertEqual(self.hub.queued(1), 0)
        self.assertEqual(sample("odinws_hub_queue_batches", shard="1"), 0)

    def test_failedDeliverDetaches(self):
        """A Deliver that fails (the shard died) detaches that shard; the others go on."""
        dead = self.shards[1] = Shard(answer=False)
        self.hub.attach(1, dead)
        self.hub.publish(0, batch(0, [1]))
        self.hub.publish(0, batch(0, [2]))
        dead.pending.pop(0).errback(ConnectionError("gone"))
        self.assertEqual(self.hub.attached, [0, 2])
        self.hub.publish(0, batch(0, [3]))
        self.assertEqual(len(dead.batches), 1)
        self.assertEqual(self.shards[2].offsets(), [(0, 1), (0, 2), (0, 3)])
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_sendRaisingDetaches(self):
        """A send function that raises detaches its shard instead of breaking publish."""
        def broken(data):
            raise RuntimeError("transport gone")
        self.hub.attach(1, broken)
        self.hub.publish(0, batch(0, [1]))
        self.assertEqual(self.hub.attached, [0, 2])
        self.assertEqual(self.shards[2].offsets(), [(0, 1)])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_lateFailureOfOldAttachmentKeepsNewOne(self):
        """A failure from a restarted shard's previous channel does not detach its new one."""
        old = Shard(answer=False)
        self.hub.attach(1, old)
        self.hub.publish(0, batch(0, [1]))
        new = Shard()
        self.hub.attach(1, new)
        old.pending.pop(0).errback(ConnectionError("old channel"))
        self.hub.publish(0, batch(0, [2]))
        self.assertEqual(self.hub.attached, [0, 1, 2])
        self.assertEqual(new.offsets(), [(0, 2)])

    def test_detachForgetsQueue(self):
        """After detach a shard gets nothing more and its queue gauge is zero."""
        slow = Shard(answer=False)
        self.hub.attach(1, slow)
        self.hub.publish(0, batch(0, [1]))
        self.hub.publish(0, batch(0, [2]))
        self.hub.detach(1)
        slow.pending.pop(0).callback({})
        self.assertEqual(len(slow.batches), 1)
        self.assertEqual(self.hub.queued(1), 0)
        self.assertEqual(sample("odinws_hub_queue_batches", shard="1"), 0)


class ShardSide(amp.AMP):
    """The receiving end of Deliver in a shard."""

    def __init__(self):
        super().__init__()
        self.batches: list[bytes] = []

    @Deliver.responder
    def deliver(self, batch):
        self.batches.append(batch)
        return {}


class HubOverAmpTests(SynchronousTestCase):
    def test_bigEventCarriedWhole(self):
        """
        Events larger than AMP's 64 KiB value limit cross a real AMP
        connection whole, in order, through control.Deliver.
        """
        clock = Clock()
        hub = Hub(clock, max_event_bytes=1 << 20, max_queue_batches=8)
        shard, parent, pump = iosim.connectedServerAndClient(amp.AMP, ShardSide)
        hub.attach(0, Shard())
        hub.attach(1, lambda data: parent.callRemote(Deliver, batch=data))
        big = [event(0, 1, size=200_000), event(0, 2, size=70_000), event(0, 3)]
        hub.publish(0, encode_batch(big))
        hub.publish(0, encode_batch([event(0, 4, size=100_000)]))
        pump.flush()
        received = [e for b in shard.batches for e in decode_batch(b)]
        self.assertEqual([e.offset for e in received], [1, 2, 3, 4])
        self.assertEqual([e.envelope for e in received],
                         [e.envelope for e in big] + [event(0, 4, size=100_000).envelope])
        self.assertEqual(hub.queued(1), 0)
