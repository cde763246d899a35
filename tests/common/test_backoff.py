"""Tests for L{odin_ws.common.backoff.Backoff}."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from odin_ws.common.backoff import Backoff


class BackoffTests(SynchronousTestCase):
    def test_doublesUpToTheMaximum(self):
        """Each delay is twice the one before, from the minimum, and stays at the maximum."""
        backoff = Backoff(0.5, 3.0)
        self.assertEqual([backoff.next() for _ in range(5)], [0.5, 1.0, 2.0, 3.0, 3.0])

    def test_resetStartsOver(self):
        """After a reset the next delay is the minimum again."""
        backoff = Backoff(1.0, 30.0)
        backoff.next()
        backoff.next()
        backoff.reset()
        self.assertEqual([backoff.next(), backoff.next()], [1.0, 2.0])

    def test_newBounds(self):
        """New bounds: a lower maximum caps the next delay at once; a reset takes the new minimum."""
        backoff = Backoff(1.0, 30.0)
        for _ in range(4):
            backoff.next()
        backoff.bounds(0.25, 5.0)
        self.assertEqual(backoff.next(), 5.0)
        backoff.reset()
        self.assertEqual(backoff.next(), 0.25)
