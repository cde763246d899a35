"""Tests for L{odin_ws.common.highwater.HighWater.raise_to}."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from odin_ws.common.events import Event
from odin_ws.common.highwater import HighWater


def ev(offset: int, epoch: str = "e1", partition: int = 0) -> Event:
    return Event.build("A", "trade", b"1", 1, "t", partition, offset, epoch)


class RaiseToTests(SynchronousTestCase):
    def setUp(self):
        self.marks = HighWater("test")

    def offsets(self, *offsets: int, epoch: str = "e1") -> list[int]:
        return [e.offset for e in self.marks.fresh([ev(o, epoch) for o in offsets])]

    def test_raised_offsets_are_duplicates(self):
        """Offsets up to the raised mark are dropped; the next one is fresh."""
        self.assertTrue(self.marks.raise_to("t", 0, "e1", 10))
        self.assertEqual(self.offsets(9, 10, 11), [11])
        self.assertEqual(self.marks.marks[("t", 0)], ("e1", 11))

    def test_never_lowered(self):
        """A mark above the offset stays where it is."""
        self.offsets(20)
        self.assertFalse(self.marks.raise_to("t", 0, "e1", 10))
        self.assertEqual(self.marks.marks[("t", 0)], ("e1", 20))
        self.assertTrue(self.marks.raise_to("t", 0, "e1", 25))
        self.assertEqual(self.offsets(25, 26), [26])

    def test_other_incarnation_left_alone(self):
        """A mark of another known epoch, or an unknown epoch against a known one: unchanged."""
        self.offsets(5)
        self.assertFalse(self.marks.raise_to("t", 0, "e2", 10))
        self.assertFalse(self.marks.raise_to("t", 0, "", 10))
        self.assertEqual(self.marks.marks[("t", 0)], ("e1", 5))

    def test_unknown_mark_takes_the_epoch(self):
        """A mark whose epoch was unknown takes the raise's epoch (same log, now identified)."""
        self.offsets(5, epoch="")
        self.assertTrue(self.marks.raise_to("t", 0, "e1", 10))
        self.assertEqual(self.marks.marks[("t", 0)], ("e1", 10))
