"""
Tests for L{odin_ws.shard.kafka.handover}: the consumer thread's batches
queued behind a busy reactor are delivered together, in order, within
C{kafka.poll_batch}, and every batch id comes back once its delivery ends.
"""

from __future__ import annotations

import queue

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from odin_ws.shard.kafka.handover import Handover
from tests.helpers import sample


class QueuedReactor:
    """callFromThread queues the call; L{run} runs what is queued, as a reactor turn would."""

    def __init__(self) -> None:
        self.calls: list = []

    def callFromThread(self, f, *args, **kw) -> None:
        self.calls.append((f, args, kw))

    def run(self) -> None:
        while self.calls:
            f, args, kw = self.calls.pop(0)
            f(*args, **kw)


class Deliveries:
    """An on_batch that records each delivery and can hold it (a Deferred not fired)."""

    def __init__(self, hold: bool = False) -> None:
        self.calls: list[list] = []
        self.held: list[Deferred] = []
        self.hold = hold

    def __call__(self, events):
        self.calls.append(list(events))
        if self.hold:
            d: Deferred = Deferred()
            self.held.append(d)
            return d
        return None


def drained(done: queue.SimpleQueue) -> list[int]:
    out = []
    while not done.empty():
        out.append(done.get_nowait())
    return out


class HandoverTests(SynchronousTestCase):

    def make(self, limit: int = 500, hold: bool = False):
        reactor = QueuedReactor()
        deliveries = Deliveries(hold)
        done: queue.SimpleQueue[int] = queue.SimpleQueue()
        return reactor, deliveries, done, Handover(reactor, deliveries, done, limit)

    def test_reactorKeepingUpTakesEachBatchAlone(self):
        """A batch handed over after the reactor took the last one is its own delivery."""
        reactor, deliveries, done, handover = self.make()
        handover.give(1, ["a"])
        reactor.run()
        handover.give(2, ["b", "c"])
        reactor.run()
        self.assertEqual(deliveries.calls, [["a"], ["b", "c"]])
        self.assertEqual(drained(done), [1, 2])

    def test_batchesQueuedBehindABusyReactorAreOneDelivery(self):
        """
        Batches handed over before the reactor got to the first are one
        delivery, their events in order, with one call into the reactor; all
        their ids come back, in order; the batches that joined another are
        counted.
        """
        reactor, deliveries, done, handover = self.make()
        handover.give(1, ["a"])
        handover.give(2, ["b"])
        handover.give(3, ["c", "d"])
        self.assertEqual(len(reactor.calls), 1)
        joined = sample("odinws_kafka_batches_joined_total")
        self.assertEqual(handover.waiting, 3)
        reactor.run()
        self.assertEqual(deliveries.calls, [["a", "b", "c", "d"]])
        self.assertEqual(drained(done), [1, 2, 3])
        self.assertEqual(handover.waiting, 0)
        self.assertEqual(sample("odinws_kafka_batches_joined_total"), joined + 2)

    def test_joiningLeavesTheFirstBatchAlone(self):
        """The consumer thread's list is not extended in place: the joined delivery is a new list."""
        reactor, deliveries, done, handover = self.make()
        first = ["a"]
        handover.give(1, first)
        handover.give(2, ["b"])
        reactor.run()
        self.assertEqual(first, ["a"])

    def test_oneDeliveryTakesAtMostTheLimit(self):
        """
        A delivery takes batches while their events stay within the limit
        (C{kafka.poll_batch}); the rest go next, in order, joined the same way.
        """
        reactor, deliveries, done, handover = self.make(limit=3)
        handover.give(1, ["a"])
        handover.give(2, ["b", "c"])
        handover.give(3, ["d"])
        handover.give(4, ["e", "f"])
        reactor.run()
        self.assertEqual(deliveries.calls, [["a", "b", "c"], ["d", "e", "f"]])
        self.assertEqual(drained(done), [1, 2, 3, 4])

    def test_aBatchOverTheLimitGoesWholeAndAlone(self):
        """A batch larger than the limit is not split, and nothing joins it."""
        reactor, deliveries, done, handover = self.make(limit=2)
        handover.give(1, ["a", "b", "c"])
        handover.give(2, ["d"])
        reactor.run()
        self.assertEqual(deliveries.calls, [["a", "b", "c"], ["d"]])

    def test_batchesHandedOverWhileTheRestWaitsJoinIt(self):
        """What the limit left waits for its own take; batches handed over meanwhile join it."""
        reactor, deliveries, done, handover = self.make(limit=2)
        handover.give(1, ["a", "b"])
        handover.give(2, ["c"])
        f, args, kw = reactor.calls.pop(0)
        f(*args, **kw)      # the first take: batch 1 only; a take for batch 2 is queued
        handover.give(3, ["d"])
        reactor.run()
        self.assertEqual(deliveries.calls, [["a", "b"], ["c", "d"]])
        self.assertEqual(drained(done), [1, 2, 3])

    def test_idsComeBackWhenTheDeliveryEnds(self):
        """A delivery that returns a Deferred gives its batches' ids back once it fires."""
        reactor, deliveries, done, handover = self.make(hold=True)
        handover.give(1, ["a"])
        handover.give(2, ["b"])
        reactor.run()
        self.assertEqual(drained(done), [])
        deliveries.held[0].callback(None)
        self.assertEqual(drained(done), [1, 2])

    def test_aFailedDeliveryStillGivesTheIdsBack(self):
        """A delivery that fails is logged, and its batches count as taken (offsets go on)."""
        reactor, deliveries, done, handover = self.make(hold=True)
        handover.give(1, ["a"])
        handover.give(2, ["b"])
        reactor.run()
        deliveries.held[0].errback(ValueError("boom"))
        self.assertEqual(drained(done), [1, 2])
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)
