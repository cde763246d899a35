"""
Tests for the C send loop (odin_ws/shard/delivery/_sendrun.c) on real
socketpairs: whole sends, one send per connection for several runs, the
connections it must hand back (frames waiting, paused, closed, policy
state, not inline, Twisted holding bytes), partial and refused sends
(EAGAIN), a closed peer (EPIPE), and bad input.
"""

from __future__ import annotations

import socket

from twisted.trial.unittest import SynchronousTestCase

from odin_ws.shard.delivery import _sendrun


class Box:
    """The attributes of an Outbox the loop reads (and, after a whole send, writes)."""

    def __init__(self, sock: socket.socket, limit: int = 1 << 20):
        self.queue: list = []
        self.inline = True
        self.paused = self.closed = self.tracking = False
        self.fdno = sock.fileno()
        self.room = self.cap = self.limit = limit


class SendRunsTests(SynchronousTestCase):
    def pair(self, sndbuf: int = 0) -> tuple[Box, socket.socket]:
        """A Box on one end of a Unix socketpair (non-blocking), and the other end."""
        ours, theirs = socket.socketpair()
        for s in (ours, theirs):
            s.setblocking(False)
            self.addCleanup(s.close)
        if sndbuf:
            ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        return Box(ours), theirs

    def received(self, sock: socket.socket) -> bytes:
        """Everything waiting on C{sock} (nothing sent: b"")."""
        data = b""
        while True:
            try:
                chunk = sock.recv(1 << 20)
            except BlockingIOError:
                return data
            if not chunk:
                return data
            data += chunk

    def test_wholeRunToEveryConnection(self):
        """One run reaches every connection whole; the frames and bytes are counted."""
        pairs = [self.pair() for _ in range(3)]
        buf = b"frame-one" + b"frame-two"
        result = _sendrun.send_runs([(buf, 2, [box for box, _ in pairs])], set())
        self.assertEqual(result, (6, 3 * len(buf), 3, [], [], 0, 0))
        for _, peer in pairs:
            self.assertEqual(self.received(peer), buf)

    def test_severalRunsLeaveInOneSendInOrder(self):
        """
        A connection in several runs gets them all, in run order, in one send
        (counted once); others get only their runs.
        """
        (a, peer_a), (b, peer_b) = self.pair(), self.pair()
        runs = [(b"r0", 1, [a]), (b"r1-", 2, [b, a]), (b"r2--", 1, (a,))]
        frames, nbytes, whole, rest, defer, _, _ = _sendrun.send_runs(runs, set())
        self.assertEqual((frames, nbytes, whole, rest, defer), (4 + 2, 9 + 3, 2, [], []))
        self.assertEqual(self.received(peer_a), b"r0r1-r2--")
        self.assertEqual(self.received(peer_b), b"r1-")

    def test_manyConnectionsInSeveralRuns(self):
        """
        Hundreds of connections in several runs (the loop's map of connections
        to runs grows past its first size): each gets its own runs, once.
        """
        pairs = [self.pair() for _ in range(300)]
        boxes = [box for box, _ in pairs]
        runs = [(b"a", 1, boxes), (b"b", 1, boxes[::2]), (b"c", 1, boxes[::-3])]
        frames, nbytes, whole, rest, defer, _, _ = _sendrun.send_runs(runs, set())
        self.assertEqual((whole, rest, defer), (300, [], []))
        self.assertEqual(frames, 300 + 150 + 100)
        for i, (_, peer) in enumerate(pairs):
            expected = b"a" + (b"b" if i % 2 == 0 else b"") + (b"c" if (299 - i) % 3 == 0 else b"")
            self.assertEqual(self.received(peer), expected)

    def test_moreRunsThanOneSendmsgTakes(self):
        """Over IOV_MAX (1024) runs for one connection still arrive whole and in order."""
        box, peer = self.pair()
        runs = [(b"%05d" % i, 1, [box]) for i in range(1500)]
        result = _sendrun.send_runs(runs, set())
        self.assertEqual(result[:3], (1500, 7500, 1))
        self.assertEqual(self.received(peer), b"".join(buf for buf, _, _ in runs))

    def test_handsBackWhatItMustNotSendTo(self):
        """
        Connections with frames waiting, paused, closed, with policy state,
        not inline, or with bytes held by Twisted (fd in writes) come back
        with their runs, in order; nothing is sent to them.
        """
        boxes = []
        for change in ("queue", "paused", "closed", "tracking", "inline", "writes"):
            box, peer = self.pair()
            if change == "queue":
                box.queue = [b"waiting", "a"]
            elif change == "inline":
                box.inline = False
            elif change != "writes":
                setattr(box, change, True)
            boxes.append((box, peer))
        ok, ok_peer = self.pair()
        held = {boxes[-1][0].fdno}
        every = [box for box, _ in boxes] + [ok]
        frames, nbytes, whole, rest, defer, _, _ = _sendrun.send_runs(
            [(b"one", 1, every), (b"two", 1, every)], held)
        self.assertEqual((frames, nbytes, whole, rest), (2, 6, 1, []))
        self.assertEqual(defer, [(box, run) for box, _ in boxes for run in (0, 1)])
        for _, peer in boxes:
            self.assertEqual(self.received(peer), b"")
        self.assertEqual(self.received(ok_peer), b"onetwo")

    def test_partialSend(self):
        """
        A run larger than the socket takes comes back with the bytes taken;
        those arrived, and only those.
        """
        box, peer = self.pair(sndbuf=4096)
        buf = bytes(range(256)) * 4096    # 1 MiB
        frames, nbytes, whole, rest, defer, _, _ = _sendrun.send_runs([(buf, 7, [box])], set())
        self.assertEqual((frames, nbytes, whole, defer), (0, 0, 0, []))
        [(back, got, sent, count)] = rest
        self.assertIs(back, box)
        self.assertIs(got, buf)
        self.assertEqual(count, 7)
        self.assertTrue(0 < sent < len(buf), sent)
        self.assertEqual(self.received(peer), buf[:sent])

    def test_partialSendOfSeveralRuns(self):
        """With several runs, what comes back is all of them joined, and the bytes taken."""
        box, peer = self.pair(sndbuf=4096)
        runs = [(bytes([i]) * 300_000, 1, [box]) for i in range(3)]
        _, _, _, [(_, got, sent, count)], _, _, _ = _sendrun.send_runs(runs, set())
        self.assertEqual(got, b"".join(buf for buf, _, _ in runs))
        self.assertEqual(count, 3)
        self.assertEqual(self.received(peer), got[:sent])

    def test_refusedWhenTheSocketIsFull(self):
        """A full socket (EAGAIN) hands the run back with 0 bytes taken."""
        box, peer = self.pair(sndbuf=4096)
        sock = socket.socket(fileno=socket.dup(box.fdno))
        self.addCleanup(sock.close)
        try:
            while True:
                sock.send(b"\0" * 65536)
        except BlockingIOError:
            pass
        [(_, _, sent, _)] = _sendrun.send_runs([(b"late", 1, [box])], set())[3]
        self.assertEqual(sent, 0)

    def test_closedPeer(self):
        """A peer that is gone (EPIPE) hands the run back with 0 bytes taken, no signal."""
        box, peer = self.pair()
        peer.close()
        frames, nbytes, whole, rest, defer, _, _ = _sendrun.send_runs([(b"gone", 1, [box])], set())
        self.assertEqual((frames, nbytes, whole, defer), (0, 0, 0, []))
        self.assertEqual([(b, buf, sent, n) for b, buf, sent, n in rest], [(box, b"gone", 0, 1)])

    def test_wholeSendRestoresRoom(self):
        """
        After a whole send, an Outbox whose cap was lowered by bytes Twisted
        held gets room and cap back to its limit (as Fanout.write does).
        """
        box, _ = self.pair()
        box.room = box.cap = 1000
        box.limit = 5000
        _sendrun.send_runs([(b"x", 1, [box])], set())
        self.assertEqual((box.room, box.cap), (5000, 5000))

    def test_badInput(self):
        """Runs that are not (bytes, int, outboxes) are refused with TypeError, nothing sent."""
        box, peer = self.pair()
        for runs in ([("text", 1, [box])], [(b"x", 1)], [b"x"], [(b"x", 1, 5)],
                     [(b"x", "1", [box])]):
            with self.assertRaises(TypeError):
                _sendrun.send_runs(runs, set())
        with self.assertRaises(TypeError):
            _sendrun.send_runs((b"x", 1, [box]), set())
        with self.assertRaises(AttributeError):
            _sendrun.send_runs([(b"x", 1, [object()])], set())
        self.assertEqual(self.received(peer), b"")

    def test_eachConnectionGetsItsVariant(self):
        """
        With a buffer per variant, each connection is sent the buffers of its
        own variant (plain to variant 0, compressed to the others), several
        runs joined in one send; plain and wire count the compressed ones.
        """
        plain, plain_peer = self.pair()
        small, small_peer = self.pair()
        small.variant = 7
        other, other_peer = self.pair()
        other.variant = 1
        every = [plain, small, other]
        runs = [((b"PLAIN-1", None, None, None, None, None, None, b"z1"), 1, every),
                ((b"PLAIN-22", b"w22", None, None, None, None, None, b"z22"), 1, every)]
        frames, nbytes, whole, rest, defer, dplain, dwire = _sendrun.send_runs(runs, set())
        self.assertEqual(self.received(plain_peer), b"PLAIN-1PLAIN-22")
        self.assertEqual(self.received(small_peer), b"z1z22")
        # Variant 1 has no buffer in the first run: both runs are Python's, in order.
        self.assertEqual(defer, [(other, 0), (other, 1)])
        self.assertEqual(self.received(other_peer), b"")
        self.assertEqual((frames, nbytes, whole, rest), (4, 15 + 5, 2, []))
        self.assertEqual((dplain, dwire), (15, 5))

    def test_variantOutOfRangeIsHandedBack(self):
        """A connection whose variant no run can have (negative, 8 or more) is handed back."""
        box, peer = self.pair()
        for v in (-1, 8, 99):
            box.variant = v
            result = _sendrun.send_runs([((b"p", b"c"), 1, [box])], set())
            self.assertEqual(result[4], [(box, 0)])
        self.assertEqual(self.received(peer), b"")

    def test_badVariants(self):
        """A run's buffers: 1 to 8 of them, bytes, None only past the first."""
        box, peer = self.pair()
        for bufs, error in (((), ValueError), ((b"x",) * 9, ValueError),
                            ((None, b"x"), TypeError), ((b"x", "text"), TypeError)):
            with self.assertRaises(error):
                _sendrun.send_runs([(bufs, 1, [box])], set())
        self.assertEqual(self.received(peer), b"")
