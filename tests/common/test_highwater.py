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


class UnknownEpochTests(SynchronousTestCase):
    """A mark whose topic identity was unknown (a failed lookup) meets events that know it."""

    def test_sameLogComparedByOffset(self):
        """
        Re-read events of a now known epoch at or below a mark of unknown
        epoch are duplicates, and the mark takes the epoch; the next offset is
        fresh. (The hub's marks of a partition first read while the brokers
        did not answer the identity lookup: a restarted shard's re-read of it
        went to its clients again, issue 22.)
        """
        marks = HighWater("shard 1")
        marks.fresh([ev(o, epoch="") for o in range(3)])
        self.assertEqual([e.offset for e in marks.fresh([ev(o) for o in range(4)])], [3])
        self.assertEqual(marks.marks[("t", 0)], ("e1", 3))
        marks2 = HighWater("shard 2")
        marks2.raise_to("t", 0, "", 2)
        self.assertEqual([e.offset for e in marks2.fresh([ev(2), ev(3)])], [3])

    def test_knownMarkAndUnknownEvent(self):
        """An event of unknown epoch is compared by offset with a known mark, which keeps its epoch."""
        marks = HighWater("shard 1")
        marks.fresh([ev(5)])
        self.assertEqual([e.offset for e in marks.fresh([ev(4, epoch=""), ev(6, epoch="")])],
                         [6])
        self.assertEqual(marks.marks[("t", 0)], ("e1", 6))


class ExportTests(SynchronousTestCase):
    """L{HighWater.exported} and L{HighWater.adopt}: the hub's marks handed to a shard."""

    def test_adoptedMarksMakeDuplicates(self):
        """What one holder has seen counts as seen by another that adopts its export."""
        hub = HighWater("hub")
        hub.fresh([ev(o, partition=p) for p in (0, 1) for o in range(5)])
        shard = HighWater("shard 1")
        self.assertEqual(shard.adopt(hub.exported()), 2)
        self.assertEqual(shard.marks, hub.marks)
        self.assertEqual([e.offset for e in shard.fresh([ev(o) for o in range(3, 7)])], [5, 6])

    def test_adoptNeverLowersNorCrossesIncarnations(self):
        """Adopted marks go through raise_to: a higher mark stays, another epoch is left alone."""
        hub = HighWater("hub")
        hub.fresh([ev(4), ev(9, partition=1)])
        shard = HighWater("shard 1")
        shard.fresh([ev(20), ev(2, epoch="e2", partition=1)])
        self.assertEqual(shard.adopt(hub.exported()), 0)
        self.assertEqual(dict(shard.marks), {("t", 0): ("e1", 20), ("t", 1): ("e2", 2)})

    def test_unreadableExport(self):
        """Anything but an export is refused with ValueError, and no mark changes."""
        shard = HighWater("shard 1")
        for data in (b"{not json", b'{"topic": "t"}', b'[{"topic": "t"}]', b"\xff"):
            self.assertRaises(ValueError, shard.adopt, data)
        self.assertEqual(dict(shard.marks), {})
