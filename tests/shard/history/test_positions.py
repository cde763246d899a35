"""Tests for L{odin_ws.shard.history.positions}: what a client's position may be."""

from __future__ import annotations

from twisted.trial import unittest

from odin_ws.shard.history import positions


class AsciiDigitsTests(unittest.TestCase):
    def test_position_digits_are_ascii_only(self):
        """
        A partition or offset written in other Unicode digits (Arabic-Indic
        "١٢", fullwidth "１２", Devanagari "१२") is a malformed position,
        never read as 12 (issue 23); nor is a position with a final newline.
        """
        self.assertEqual(positions.decode("t:12:e:12"), ("t", 12, "e", 12))
        for bad in ("t:0:e:\u0661\u0662", "t:\u0661\u0662:e:5", "t:0:e:\uff11\uff12",
                    "t:0:e:\u0967\u0968", "t:0:e:12\n"):
            with self.assertRaises(positions.InvalidPosition) as e:
                positions.decode(bad)
            self.assertIn("malformed position", str(e.exception))

    def test_vector_digits_are_ascii_only(self):
        """The SSE id (a position vector) takes ASCII digits only, too."""
        self.assertEqual(positions.decode_vector("t~e~1:12", 10), {("t", 1): ("e", 12)})
        for bad in ("t~e~1:\u0661\u0662", "t~e~\u0661:12", "t~e~1:12\n"):
            self.assertRaises(positions.InvalidPosition, positions.decode_vector, bad, 10)
