"""Tests for L{odin_ws.shard.delivery.throttle}: a trailing-edge throttle on a fake clock."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from odin_ws.shard.delivery.throttle import Throttle


class ThrottleTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.emitted: list[tuple[float, object]] = []
        self.throttle: Throttle[object] = Throttle(
            self.clock, 0.5, lambda item: self.emitted.append((self.clock.seconds(), item)))

    def test_firstOfferAtOnce(self):
        """The first offer after a quiet interval is emitted at once, without waiting."""
        self.throttle.offer("a")
        self.assertEqual(self.emitted, [(0, "a")])
        self.clock.advance(0.5)
        self.assertEqual(self.emitted, [(0, "a")], "nothing pending, nothing more")
        self.clock.advance(10)
        self.throttle.offer("b")
        self.assertEqual(self.emitted[-1], (10.5, "b"))

    def test_trailingEdgeEmitsLatest(self):
        """Offers within an interval replace each other; the latest goes out when it ends."""
        self.throttle.offer(1)
        for i, at in ((2, 0.1), (3, 0.2), (4, 0.3)):
            self.clock.advance(at - self.clock.seconds())
            self.throttle.offer(i)
        self.assertTrue(self.throttle.pending)
        self.clock.advance(0.2)
        self.assertEqual(self.emitted, [(0, 1), (0.5, 4)])
        self.assertEqual(self.throttle.replaced, 2)
        self.assertFalse(self.throttle.pending)

    def test_atMostOnePerInterval(self):
        """A steady 50/s stream through a 2/s throttle: two a second, ending on the latest."""
        throttle: Throttle[int] = Throttle(
            self.clock, 0.5, lambda item: self.emitted.append((self.clock.seconds(), item)))
        for i in range(500):  # ten seconds at 50/s
            throttle.offer(i)
            self.clock.advance(0.02)
        self.clock.pump([0.02] * 50)  # Clock.advance runs calls at the end of the step
        times = [t for t, _ in self.emitted]
        self.assertTrue(all(b - a >= 0.5 - 1e-9 for a, b in zip(times, times[1:])), times)
        self.assertIn(len(self.emitted), (20, 21))
        self.assertEqual(self.emitted[-1][1], 499)
        last_offer = 499 * 0.02
        self.assertLessEqual(self.emitted[-1][0] - last_offer, 0.5)
        self.assertEqual(throttle.replaced + len(self.emitted), 500)

    def test_quietAfterTrailingEmitRestarts(self):
        """After a trailing emit the next interval still runs; a quiet one re-opens the gate."""
        self.throttle.offer("a")
        self.clock.advance(0.1)
        self.throttle.offer("b")
        self.clock.advance(0.4)  # b goes out at 0.5, starting an interval to 1.0
        self.clock.advance(0.2)
        self.throttle.offer("c")  # inside that interval: waits
        self.assertEqual([item for _, item in self.emitted], ["a", "b"])
        self.clock.advance(0.3)
        self.assertEqual(self.emitted[-1], (1.0, "c"))
        self.clock.advance(0.5)  # quiet interval over
        self.throttle.offer("d")
        self.assertEqual(self.emitted[-1], (1.5, "d"))

    def test_stop(self):
        """stop drops the pending item, cancels the timer, and ignores later offers."""
        self.throttle.offer("a")
        self.throttle.offer("b")
        self.throttle.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(1)
        self.throttle.offer("c")
        self.assertEqual(self.emitted, [(0, "a")])
        self.throttle.stop()

    def test_noneIsAnItem(self):
        """None is offered and emitted like any item (it is not 'nothing pending')."""
        self.throttle.offer("a")
        self.throttle.offer(None)
        self.clock.advance(0.5)
        self.assertEqual(self.emitted, [(0, "a"), (0.5, None)])

    def test_emitThatRaisesKeepsTheRate(self):
        """An emit that raises leaves the interval running: the next offer still waits for it."""
        calls = []

        def emit(item):
            calls.append(item)
            raise RuntimeError("subscriber gone")

        throttle: Throttle[str] = Throttle(self.clock, 1, emit)
        self.assertRaises(RuntimeError, throttle.offer, "a")
        throttle.offer("b")
        self.assertEqual(calls, ["a"])
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)

    def test_intervalMustBePositive(self):
        """A zero, negative or NaN interval is refused at construction."""
        for interval in (0, -1, float("nan")):
            self.assertRaises(ValueError, Throttle, self.clock, interval, print)
