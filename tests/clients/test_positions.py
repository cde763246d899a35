"""Positions (odinws_client.positions): parsed only to compare offsets of one partition."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from odinws_client.positions import Position, PositionMap


class PositionTests(SynchronousTestCase):
    def test_parse(self):
        """topic:partition:epoch:offset gives the partition, the stream and the offset."""
        pos = Position.parse("odin.trades:3:1k9x2f:12345")
        assert pos is not None
        self.assertEqual((pos.partition, pos.stream, pos.offset),
                         ("odin.trades:3", "odin.trades:3:1k9x2f", 12345))

    def test_not_positions(self):
        """Anything else is not a position (and then never compared)."""
        for text in (None, 7, "", "nope", "t:0:e:", "t:0:e:-1", "t:0:e:1.5", "t:0:e:٣"):
            self.assertIsNone(Position.parse(text), text)

    def test_newer(self):
        """Newer: a later offset of the stream, another partition, or another epoch (recreated topic)."""
        last = PositionMap(["odin.trades:3:e:99"])
        self.assertTrue(last.is_new("odin.trades:3:e:100"))
        self.assertFalse(last.is_new("odin.trades:3:e:99"))
        self.assertFalse(last.is_new("odin.trades:3:e:7"))
        self.assertTrue(last.is_new("odin.trades:3:other:1"))
        self.assertTrue(last.is_new("odin.trades:4:e:1"))

    def test_big_offsets_compare_exactly(self):
        """Offsets past 2**53 compare exactly (no float)."""
        last = PositionMap(["t:0:e:9007199254740993"])
        self.assertTrue(last.is_new("t:0:e:9007199254740994"))
        self.assertFalse(last.is_new("t:0:e:9007199254740992"))

    def test_advance_keeps_the_latest_per_partition(self):
        """advance holds the latest position of each partition; a new epoch replaces the old."""
        last = PositionMap()
        for text in ("t:0:e:5", "t:0:e:3", "t:1:e:2", "t:0:e:9", "t:1:f:1"):
            last.advance(text)
        self.assertEqual(last.texts(), ["t:0:e:9", "t:1:f:1"])
