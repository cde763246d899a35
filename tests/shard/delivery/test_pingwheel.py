"""The shard's keepalive wheel (odin_ws/shard/delivery/pingwheel.py) on a fake clock."""

from __future__ import annotations

from collections.abc import Sequence

from twisted.internet.task import Clock
from twisted.trial import unittest

from odin_ws.common import metrics
from odin_ws.shard.delivery.pingwheel import NOT_DUE, TICK, PingWheel


class Conn:
    """What the wheel sees of a connection: it records pings and drops."""

    def __init__(self, answers: bool = True):
        self.ping_due = NOT_DUE
        self.autoPingPending: bytes | None = None
        self.answers = answers
        self.pings: list[bytes] = []
        self.dropped = False

    def sendPing(self, payload: bytes | None = None) -> None:
        assert payload is not None
        self.pings.append(payload)

    def pong(self) -> None:
        """The client's answer, as Autobahn's pong handler takes it: pending cleared."""
        self.autoPingPending = None

    def onAutoPingTimeout(self) -> None:
        self.dropped = True


class Stream:
    """An event stream as the wheel sees it: comments only, no answer."""

    def __init__(self):
        self.ping_due = NOT_DUE
        self.comments = 0

    def ping(self) -> None:
        self.comments += 1


class PingWheelTests(unittest.TestCase):

    def setUp(self):
        self.clock = Clock()
        self.wheel = PingWheel(self.clock, 30.0, 10.0)

    def run_for(self, seconds: float, answering: Sequence[Conn] = ()) -> None:
        """Advance the clock in TICKs; C{answering} answer each ping at once."""
        for _ in range(round(seconds / TICK)):
            self.clock.advance(TICK)
            for conn in answering:
                if conn.autoPingPending is not None:
                    conn.pong()

    def test_ping_each_interval_drop_silent(self):
        """
        A connection is pinged one interval after it opened; one that does
        not answer is dropped one timeout after its ping (and counted), one
        that answers is pinged again an interval after its previous ping.
        """
        silent, answering = Conn(), Conn()
        self.wheel.add(silent)
        self.wheel.add(answering)
        before = metrics.PING_TIMEOUTS._value.get()
        self.run_for(30.0 - TICK, [answering])
        self.assertEqual((silent.pings, answering.pings), ([], []))
        self.run_for(TICK, [answering])
        self.assertEqual((len(silent.pings), len(answering.pings)), (1, 1))
        self.assertEqual(len(silent.pings[0]), 12)  # Autobahn reads a time and a sequence back
        self.run_for(10.0 - TICK, [answering])
        self.assertFalse(silent.dropped)
        self.run_for(TICK, [answering])
        self.assertTrue(silent.dropped)
        self.assertEqual(metrics.PING_TIMEOUTS._value.get(), before + 1)
        self.run_for(20.0 - TICK, [answering])
        self.assertEqual(len(answering.pings), 1)
        self.run_for(TICK, [answering])
        self.assertEqual(len(answering.pings), 2)
        self.assertNotEqual(answering.pings[0], answering.pings[1])
        self.assertFalse(answering.dropped)
        self.assertEqual(len(silent.pings), 1)
        self.assertEqual(len(self.wheel), 1)

    def test_message_since_ping_counts_as_answer(self):
        """A connection whose pending ping was cleared by another message is not dropped."""
        conn = Conn()
        self.wheel.add(conn)
        self.run_for(30.0)
        self.assertEqual(len(conn.pings), 1)
        conn.autoPingPending = None   # what ClientProtocol.onMessage does
        self.run_for(10.0)
        self.assertFalse(conn.dropped)

    def test_discard_forgets_connection(self):
        """
        A connection gone is out of the wheel at once: never pinged, no
        reference kept, and the wheel's timer stops when nothing waits.
        """
        kept, gone = Conn(), Conn()
        self.wheel.add(kept)
        self.wheel.add(gone)
        self.wheel.discard(gone)
        self.assertEqual(gone.ping_due, NOT_DUE)
        self.assertEqual(len(self.wheel), 1)
        self.run_for(30.0)
        self.assertEqual((len(kept.pings), gone.pings), (1, []))
        self.wheel.discard(kept)            # while its check is due
        self.wheel.discard(kept)            # twice is harmless
        self.assertEqual(len(self.wheel), 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_connections_spread_by_open_time(self):
        """Each connection is pinged at its own due time, not all at one tick."""
        first, second = Conn(), Conn()
        self.wheel.add(first)
        self.run_for(5.0)
        self.wheel.add(second)
        self.run_for(25.0, [first, second])
        self.assertEqual((len(first.pings), len(second.pings)), (1, 0))
        self.run_for(5.0, [first, second])
        self.assertEqual((len(first.pings), len(second.pings)), (1, 1))

    def test_timeout_longer_than_interval(self):
        """With a timeout over the interval, the next ping waits for the check."""
        self.wheel.reconfigure(5.0, 10.0)
        conn = Conn()
        self.wheel.add(conn)
        self.run_for(5.0, [conn])
        self.assertEqual(len(conn.pings), 1)
        self.run_for(10.0, [conn])
        self.assertEqual(len(conn.pings), 2)
        self.assertFalse(conn.dropped)

    def test_interval_zero(self):
        """
        At interval 0 a new connection is never pinged; set to 0 later, the
        connections waiting get no further ping and leave the wheel.
        """
        conn = Conn()
        self.wheel.add(conn)
        self.wheel.reconfigure(0.0, 10.0)
        late = Conn()
        self.wheel.add(late)
        self.assertEqual(late.ping_due, NOT_DUE)
        self.run_for(60.0)
        self.assertEqual((conn.pings, late.pings), ([], []))
        self.assertEqual(len(self.wheel), 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_late_turn_catches_up(self):
        """A turn that comes late (a busy reactor) serves every bucket that fell due meanwhile."""
        conns = [Conn() for _ in range(3)]
        for conn in conns:
            self.wheel.add(conn)
            self.clock.advance(1.0)
        self.clock.advance(40.0)    # one late turn
        self.assertEqual([len(c.pings) for c in conns], [1, 1, 1])

    def test_streams_commented_every_interval(self):
        """
        A wheel of event streams (no answers) writes each a comment every
        interval from its open, and never drops one.
        """
        wheel = PingWheel(self.clock, 30.0, 0.0, answers=False)
        stream = Stream()
        wheel.add(stream)
        self.run_for(30.0 - TICK)
        self.assertEqual(stream.comments, 0)
        self.run_for(TICK)
        self.assertEqual(stream.comments, 1)
        self.run_for(60.0)
        self.assertEqual(stream.comments, 3)
        wheel.discard(stream)
        self.assertEqual(len(wheel), 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])
