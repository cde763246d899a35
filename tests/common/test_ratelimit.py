"""Tests for L{odin_ws.common.ratelimit}."""

from twisted.internet.task import Clock
from twisted.trial import unittest

from odin_ws.common.ratelimit import KeyedBuckets, TokenBucket


class TokenBucketTests(unittest.TestCase):
    def test_burst_then_rate(self):
        """A full bucket allows C{burst} at once, then C{rate} per second."""
        clock = Clock()
        b = TokenBucket(rate=2, burst=5, now=clock.seconds)
        self.assertEqual([b.take() for _ in range(7)], [True] * 5 + [False] * 2)
        clock.advance(1.0)
        self.assertEqual([b.take() for _ in range(3)], [True, True, False])

    def test_never_above_burst(self):
        """A long quiet period refills to C{burst}, not more."""
        clock = Clock()
        b = TokenBucket(rate=100, burst=3, now=clock.seconds)
        clock.advance(3600)
        self.assertEqual(sum(b.take() for _ in range(10)), 3)


class KeyedBucketsTests(unittest.TestCase):
    def test_keys_independent(self):
        """Each key has its own bucket."""
        clock = Clock()
        k = KeyedBuckets(1, 1, clock.seconds)
        self.assertTrue(k.take("a"))
        self.assertFalse(k.take("a"))
        self.assertTrue(k.take("b"))

    def test_bounded(self):
        """At most C{max_keys} buckets are kept; the least recently used goes first."""
        clock = Clock()
        k = KeyedBuckets(1, 1, clock.seconds, max_keys=2)
        k.take("a")
        k.take("b")
        k.take("a")
        k.take("c")
        self.assertEqual(len(k), 2)
        self.assertFalse(k.take("a"))  # still remembered: spent
        self.assertTrue(k.take("b"))   # forgotten: fresh bucket
