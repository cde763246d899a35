"""
Tests for L{odin_ws.parent.placement}: which shard a new connection goes to.
"""

from __future__ import annotations

from twisted.trial import unittest

from odin_ws.parent.placement import SATURATED, place
from tests.helpers import FakeShard


class PlaceTests(unittest.TestCase):
    def test_fewest(self):
        """The shard with the fewest connections wins; ties go to the lowest index."""
        shards = [FakeShard(0, 5), FakeShard(1, 3), FakeShard(2, 3)]
        self.assertEqual(place(shards, 1000), (shards[1], None))

    def test_skips_full_dead_and_closed(self):
        """Full, dead and not-accepting shards are never chosen."""
        shards = [FakeShard(0, 10, capacity=10), FakeShard(1, 0, alive=False),
                  FakeShard(2, 0, accepting=False), FakeShard(3, 9, capacity=10)]
        self.assertEqual(place(shards, 1000), (shards[3], None))

    def test_no_shard(self):
        """No shard with room gives no_shard."""
        self.assertEqual(place([FakeShard(0, 1, capacity=1), FakeShard(1, alive=False)], 1000),
                         (None, "no_shard"))
        self.assertEqual(place([], 1000), (None, "no_shard"))

    def test_node_full(self):
        """The node limit counts alive shards' connections and gives node_full."""
        shards = [FakeShard(0, 6), FakeShard(1, 4), FakeShard(2, 50, alive=False)]
        self.assertEqual(place(shards, 10), (None, "node_full"))
        self.assertEqual(place(shards, 11)[0], shards[1])

    def test_saturated(self):
        """Shards with room whose handoff slots are all taken give SATURATED, not no_shard."""
        shards = [FakeShard(0, 1), FakeShard(1, 2)]
        for shard in shards:
            shard.saturated = True
        self.assertEqual(place(shards, 1000), (None, SATURATED))
        shards[1].saturated = False
        self.assertEqual(place(shards, 1000), (shards[1], None))
