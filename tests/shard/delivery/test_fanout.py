"""
Tests for L{odin_ws.shard.delivery.fanout}: one write per connection per turn, runs
of frames joined once, the counters and their collector, and the direct-send
path on real sockets (whole, partial, refused; Fanout.flush's inline path and
Outbox.flush), with the kernel's unsent bytes bounded.
"""

from __future__ import annotations

import json
import socket
import time

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.protocol import WebSocketProtocol
from twisted.internet import tcp
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase

from odin_ws.common.events import Event
from odin_ws.common.twisted_internals import held
from odin_ws.shard.delivery.fanout import Fanout, limit_unsent
from odin_ws.shard.delivery.frames import Chunk
from odin_ws.shard.delivery.outbox import Outbox
from odin_ws.shard.delivery.writestats import WriteStats, WriteStatsCollector
from odin_ws.shard.history.holes import Hole
from tests.helpers import (
    PLAIN_UPGRADE,
    CountingTransport,
    FakeProtocol,
    LoopbackClient,
    SendLoop,
    ShardTestCase,
    Sink,
    event,
    events_in,
    policies,
    tcp_pair,
    text,
)


class CoalescingTests(SendLoop, SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.stats = WriteStats()
        self.fanout = Fanout(self.clock, self.stats, native=self.send_loop())

    def outbox(self, transport=None, limit: int = 1 << 20) -> Outbox:
        proto = FakeProtocol(transport if transport is not None else CountingTransport())
        return Outbox(proto, self.fanout, policies(), limit, 5.0, lambda: None)

    def test_oneWritePerTurn(self):
        """Ten frames pushed in a turn leave in one write, in order."""
        box = self.outbox()
        frames = [event("a", i) for i in range(10)]
        for f in frames:
            box.push(f, "a", "trade")
        self.fanout.flush()
        self.assertEqual(box.transport.writes, 1)
        self.assertEqual(box.transport.value(), b"".join(frames))
        self.assertEqual((self.stats.writes, self.stats.delivered, self.stats.buffered),
                         (1, 10, 1))
        self.assertEqual(self.stats.bytes_out, len(b"".join(frames)))

    def test_flushAtTurnEndWithoutExplicitFlush(self):
        """Without flush(), one callLater(0) writes the turn's frames."""
        boxes = [self.outbox() for _ in range(3)]
        for i in range(4):
            self.fanout.publish(event("a", i), "a", "trade", boxes)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.assertEqual(boxes[0].transport.value(), b"")
        self.clock.advance(0)
        for box in boxes:
            self.assertEqual(box.transport.writes, 1)
            self.assertEqual(events_in(box.transport.value()), [("a", i) for i in range(4)])

    def test_flushCancelsTurnEndCall(self):
        """An explicit flush leaves no timer behind."""
        self.fanout.publish(event("a", 1), "a", "trade", [self.outbox()])
        self.fanout.flush()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_holdSchedulesNoTurnEndCall(self):
        """
        Under a hold (a delivery batch, which flushes at its end) publishing
        schedules no timer and the flush writes; after it, publishing
        schedules the turn-end write again.
        """
        box = self.outbox()
        self.fanout.hold()
        self.fanout.publish(event("a", 1), "a", "trade", [box])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.fanout.flush()
        self.fanout.release()
        self.assertEqual(events_in(box.transport.value()), [("a", 1)])
        self.fanout.publish(event("a", 2), "a", "trade", [box])
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(0)
        self.assertEqual(events_in(box.transport.value()), [("a", 1), ("a", 2)])

    def test_releaseWithoutFlushWritesAtTurnEnd(self):
        """
        A holder that stopped before its flush (it raised) strands nothing:
        the release schedules the turn-end write of what it published.
        """
        box = self.outbox()
        self.fanout.hold()
        self.fanout.publish(event("a", 1), "a", "trade", [box])
        self.fanout.release()
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(0)
        self.assertEqual(events_in(box.transport.value()), [("a", 1)])

    def test_publishSharesOneFrame(self):
        """publish() writes the same frame to every outbox, one write each."""
        boxes = [self.outbox() for _ in range(3)]
        frame = event("a", 7)
        self.fanout.publish(frame, "a", "trade", boxes)
        self.fanout.flush()
        self.assertEqual([b.transport.value() for b in boxes], [frame] * 3)
        self.assertEqual((self.stats.writes, self.stats.delivered), (3, 3))

    def run_of(self, channel: str, first: int, count: int, event_type: str = "trade"):
        return [(event(channel, n), channel, event_type) for n in range(first, first + count)]

    def test_runIsOneEntryPerOutbox(self):
        """
        publish_run joins a run's frames once: every outbox holds the same
        bytes object as one queue entry, and writes it once, in order.
        """
        boxes = [self.outbox() for _ in range(3)]
        for box in boxes:
            box.pauseProducing()    # so the entries can be looked at after the flush
        run = self.run_of("a", 0, 10)
        self.fanout.publish_run(run, boxes)
        self.fanout.flush()
        self.assertEqual([len(b.queue) for b in boxes], [2, 2, 2])
        self.assertIs(boxes[0].queue[0], boxes[2].queue[0])
        self.assertIsInstance(boxes[0].queue[1], Chunk)
        for box in boxes:
            box.resumeProducing()
        for box in boxes:
            self.assertEqual(box.transport.writes, 1)
            self.assertEqual(events_in(box.transport.value()), [("a", n) for n in range(10)])
        self.assertEqual((self.stats.writes, self.stats.delivered), (3, 30))
        self.assertEqual(self.stats.bytes_out, 3 * len(b"".join(f for f, _, _ in run)))

    def test_runsAndSinglesKeepOrder(self):
        """Runs and single frames pushed in one turn leave in one write, in push order."""
        box = self.outbox()
        self.fanout.publish_run(self.run_of("a", 0, 3), [box])
        self.fanout.publish(event("b", 3), "b", "trade", [box])
        self.fanout.publish_run(self.run_of("a", 4, 2), [box])
        self.fanout.flush()
        self.assertEqual(box.transport.writes, 1)
        self.assertEqual([n for _, n in events_in(box.transport.value())], list(range(6)))
        self.assertEqual(self.stats.delivered, 6)

    def test_runOfOneIsAPlainPublish(self):
        """A run of one frame is queued as that frame, with its channel."""
        box = self.outbox()
        box.pauseProducing()
        [(frame, channel, etype)] = run = self.run_of("a", 0, 1)
        self.fanout.publish_run(run, [box])
        self.fanout.flush()
        self.assertEqual(box.queue, [frame, "a"])

    def test_closeIsFinalAndIdempotent(self):
        """After close() the outbox drops what waits, unregisters and never writes."""
        box = self.outbox()
        box.push(event("a", 1), "a", "trade")
        self.assertIs(box.transport.producer, box)
        box.close()
        box.close()
        self.assertIsNone(box.transport.producer)
        box.push(event("a", 2), "a", "trade")
        self.fanout.publish(event("a", 3), "a", "trade", [box])
        box.resumeProducing()
        self.fanout.flush()
        self.assertEqual(box.transport.value(), b"")
        self.assertEqual(box.buffered(), 0)

    def test_collector(self):
        """The collector exposes the counters under the documented names and labels."""
        self.stats.delivered, self.stats.direct, self.stats.high_water = 5, 2, 700
        self.stats.dropped["conflate"] = 3
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for family in WriteStatsCollector(self.stats).collect()
                   for s in family.samples}
        self.assertEqual(samples[("odinws_events_delivered_total", ())], 5)
        self.assertEqual(samples[("odinws_writes_total", (("path", "direct"),))], 2)
        self.assertEqual(samples[("odinws_events_dropped_total", (("policy", "conflate"),))], 3)
        self.assertEqual(samples[("odinws_outbound_buffer_high_water_bytes", ())], 700)
        for name in ("odinws_outbound_bytes_total", "odinws_events_conflated_total",
                     "odinws_slow_disconnects_total"):
            self.assertIn((name, ()), samples)


class FlushWindowTests(SendLoop, SynchronousTestCase):
    """
    outbound.flush_delay: with a window, flush() only starts one timer and
    the window's events leave in one write per connection when it ends.
    """

    def setUp(self):
        self.clock = MemoryReactorClock()
        self.stats = WriteStats()
        self.fanout = Fanout(self.clock, self.stats, delay=0.002, native=self.send_loop())

    def outbox(self) -> Outbox:
        return Outbox(FakeProtocol(CountingTransport()), self.fanout, policies(), 1 << 20,
                      5.0, lambda: None)

    def test_eventsInTheWindowLeaveInOneWrite(self):
        """Three flushed events, 1 ms apart, go out together 2 ms after the first."""
        boxes = [self.outbox() for _ in range(3)]
        for i in range(3):
            self.fanout.publish(event("a", i), "a", "trade", boxes)
            self.assertFalse(self.fanout.flush())
            if i < 2:
                self.clock.advance(0.001)
                self.assertEqual(boxes[0].transport.writes, 0 if i == 0 else 1)
        # the first two went out at 2 ms; the third started a new window
        self.assertEqual(events_in(boxes[0].transport.value()), [("a", 0), ("a", 1)])
        self.clock.advance(0.002)
        for box in boxes:
            self.assertEqual(box.transport.writes, 2)
            self.assertEqual(events_in(box.transport.value()), [("a", i) for i in range(3)])
        self.assertEqual((self.stats.writes, self.stats.delivered), (6, 9))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_oneTimerPerWindow(self):
        """However many events and connections, a window is one delayed call."""
        boxes = [self.outbox() for _ in range(5)]
        for i in range(10):
            self.fanout.publish(event("a", i), "a", "trade", boxes)
            self.fanout.flush()
        [call] = self.clock.getDelayedCalls()
        self.assertEqual(call.getTime(), 0.002)

    def test_afterFlushRunsAtTheWindowsEnd(self):
        """Callbacks for after the write (latency, slow disconnects) wait for the window."""
        box = self.outbox()
        ran = []
        self.fanout.publish(event("a", 1), "a", "trade", [box])
        self.fanout.flush()
        self.fanout.after_flush(lambda: ran.append(box.transport.writes))
        self.clock.advance(0.0019)
        self.assertEqual(ran, [])
        self.clock.advance(0.0001)
        self.assertEqual(ran, [1])

    def test_reconfiguredToZeroWritesAtOnce(self):
        """Switched off live, the next flush writes what the window held, now."""
        box = self.outbox()
        self.fanout.publish(event("a", 1), "a", "trade", [box])
        self.fanout.flush()
        self.fanout.reconfigure(0.0)
        self.fanout.publish(event("a", 2), "a", "trade", [box])
        self.assertTrue(self.fanout.flush())
        self.assertEqual(box.transport.writes, 1)
        self.assertEqual(events_in(box.transport.value()), [("a", 1), ("a", 2)])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_zeroWindowWritesInFlush(self):
        """With 0 (the default) flush() writes at once and leaves no timer."""
        fanout = Fanout(self.clock, self.stats, native=self.send_loop())
        box = Outbox(FakeProtocol(CountingTransport()), fanout, policies(), 1 << 20, 5.0,
                     lambda: None)
        fanout.publish(event("a", 1), "a", "trade", [box])
        self.assertTrue(fanout.flush())
        self.assertEqual(box.transport.writes, 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class RealSocketTests(SendLoop, TestCase):
    """The direct path on real loopback TCP connections and the real reactor."""

    def setUp(self):
        from twisted.internet import reactor
        self.reactor = reactor
        self.stats = WriteStats()
        self.fanout = Fanout(reactor, self.stats, native=self.send_loop())

    def pair(self, **bufs) -> tuple[Sink, LoopbackClient]:
        sink, client = tcp_pair(self.reactor, **bufs)
        self.assertIsInstance(sink.transport, tcp.Server)

        def cleanup():
            client.sock.close()
            sink.transport.abortConnection()
            return sink.lost
        self.addCleanup(cleanup)
        return sink, client

    def outbox(self, sink: Sink, limit: int = 1 << 24, policy: str = "drop") -> Outbox:
        return Outbox(FakeProtocol(sink.transport), self.fanout, lambda t: policy, limit, 5.0,
                      lambda: None)

    @inlineCallbacks
    def test_directSend(self):
        """With nothing held by Twisted, the joined frames go out by socket.send, intact."""
        sink, client = self.pair()
        box = self.outbox(sink)
        frames = [event("a", i) for i in range(10)]
        for f in frames:
            box.push(f, "a", "trade")
        self.fanout.flush()
        self.assertEqual((self.stats.direct, self.stats.writes), (1, 1))
        self.assertEqual(held(sink.transport), 0)
        data = yield client.read(len(b"".join(frames)))
        self.assertEqual(data, b"".join(frames))

    @inlineCallbacks
    def test_autobahnConnectionOverRealSocket(self):
        """
        An Outbox made in onOpen of a real Autobahn connection (as the shard
        does) sends directly on its tcp.Server, after Autobahn's 101 answer.
        """
        fanout, opened, lost = self.fanout, [], Deferred()

        class Opened(WebSocketServerProtocol):
            def onOpen(self):
                self.outbox = Outbox(self, fanout, policies(), 1 << 20, 5.0, lambda: None)
                opened.append(self)

            def connectionLost(self, reason):
                super().connectionLost(reason)
                lost.callback(None)

        factory = WebSocketServerFactory()
        factory.protocol = Opened
        factory.setProtocolOptions(openHandshakeTimeout=0, closeHandshakeTimeout=0,
                                   autoPingInterval=0)
        _, client = tcp_pair(self.reactor, factory=factory)

        def cleanup():
            client.sock.close()
            if opened:
                opened[0].transport.abortConnection()
                return lost
        self.addCleanup(cleanup)
        client.sock.send(PLAIN_UPGRADE)
        head = yield client.read(lambda data: b"\r\n\r\n" in data)
        self.assertTrue(head.startswith(b"HTTP/1.1 101 "), head)
        [proto] = opened
        self.assertIsInstance(proto.transport, tcp.Server)
        client.data.clear()
        frames = [event("a", i) for i in range(5)]
        for f in frames:
            self.fanout.publish(f, "a", "trade", [proto.outbox])
        self.fanout.flush()
        self.assertEqual(self.stats.direct, 1)
        data = yield client.read(len(b"".join(frames)))
        self.assertEqual(data, b"".join(frames))

    @inlineCallbacks
    def test_waitsWhileTwistedHoldsBytes(self):
        """
        When Twisted holds bytes written before (an Autobahn control frame,
        say), the frames wait in the Outbox, and go out after them once
        Twisted has drained: order on the wire is kept.
        """
        sink, client = self.pair()
        box = self.outbox(sink)
        sink.transport.write(b"ahead")
        frame = event("a", 1)
        box.push(frame, "a", "trade")
        self.fanout.flush()
        self.assertEqual(self.stats.writes, 0)
        self.assertTrue(box.paused)
        self.assertEqual(box.queued(), len(frame))
        data = yield client.read(5 + len(frame))
        self.assertEqual(data, b"ahead" + frame)
        self.assertEqual((self.stats.writes, self.stats.direct), (1, 1))

    @inlineCallbacks
    def test_refusedSendFallsBackToTwisted(self):
        """A send the kernel refuses (full socket buffer) goes to transport.write whole."""
        sink, client = self.pair(sndbuf=4096, rcvbuf=4096)
        box = self.outbox(sink)
        junk = client.fill_kernel(sink.transport.socket)
        frames = [event("a", i) for i in range(5)]
        for f in frames:
            box.push(f, "a", "trade")
        self.fanout.flush()
        self.assertEqual((self.stats.fallbacks, self.stats.buffered, self.stats.direct),
                         (1, 1, 0))
        self.assertEqual(held(sink.transport), len(b"".join(frames)))
        data = yield client.read(junk + len(b"".join(frames)))
        self.assertEqual(data, b"\0" * junk + b"".join(frames))

    @inlineCallbacks
    def test_partialSend(self):
        """
        When the kernel takes part of a write, the rest goes to Twisted; frames
        pushed meanwhile wait in the Outbox; once the client reads, every byte
        arrives exactly once and in order.
        """
        sink, client = self.pair(sndbuf=4096, rcvbuf=4096)
        box = self.outbox(sink)
        first = [event("a", i, pad=16000) for i in range(40)]
        for f in first:
            box.push(f, "a", "trade")
        self.fanout.flush()
        self.assertEqual((self.stats.partial, self.stats.writes), (1, 1))
        rest = held(sink.transport)
        self.assertTrue(0 < rest < len(b"".join(first)), rest)
        self.assertTrue(box.paused, "Twisted holds more than its high-water mark")
        later = [event("a", i) for i in range(40, 60)]
        for f in later:
            box.push(f, "a", "trade")
        self.fanout.flush()
        self.assertEqual(self.stats.writes, 1, "frames wait in the Outbox while paused")
        self.assertEqual(box.buffered(), rest + len(b"".join(later)))
        expected = b"".join(first + later)
        data = yield client.read(len(expected))
        self.assertEqual(data, expected)
        self.assertEqual(self.stats.bytes_out, len(expected))
        self.assertEqual(box.buffered(), 0)

    @inlineCallbacks
    def test_stalledClientBoundedByDropPolicy(self):
        """
        A real client that stops reading: the Outbox keeps the bytes waiting
        within the limit, drops and counts the rest, and once the client reads,
        it receives an in-order subsequence, each event once.
        """
        sink, client = self.pair(sndbuf=4096, rcvbuf=4096)
        limit = 65536
        box = self.outbox(sink, limit=limit)
        frame_size = len(event("a", 0, pad=1000))
        published = 0
        for _turn in range(40):
            for _ in range(10):
                self.fanout.publish(event("a", published, pad=1000), "a", "trade", [box])
                published += 1
            self.fanout.flush()
            self.assertLessEqual(box.buffered(), limit + frame_size)
        self.assertGreater(self.stats.dropped["drop"], 0)
        self.assertEqual(self.stats.delivered + box.queued() // frame_size
                         + self.stats.dropped["drop"], published)
        expected_bytes = self.stats.bytes_out + box.queued()
        data = yield client.read(expected_bytes)
        self.assertEqual(len(data), expected_bytes)
        got = [n for _, n in events_in(data)]
        self.assertEqual(got, sorted(set(got)))
        self.assertEqual(len(got) + self.stats.dropped["drop"], published)


    def run_frames(self, count: int, pad: int = 60):
        return [(event("a", n, pad=pad), "a", "trade") for n in range(count)]

    @inlineCallbacks
    def test_runDirect(self):
        """A run goes out by one socket.send per connection and counts its frames."""
        pairs = [self.pair() for _ in range(3)]
        boxes = [self.outbox(sink) for sink, _ in pairs]
        run = self.run_frames(10)
        expected = b"".join(f for f, _, _ in run)
        self.fanout.publish_run(run, boxes)
        self.fanout.flush()
        self.assertEqual((self.stats.direct, self.stats.writes, self.stats.delivered),
                         (3, 3, 30))
        self.assertEqual(self.stats.bytes_out, 3 * len(expected))
        for box, (_, client) in zip(boxes, pairs):
            self.assertEqual(box.room, box.limit)
            data = yield client.read(len(expected))
            self.assertEqual(data, expected)

    @inlineCallbacks
    def test_runsOfOneWriteLeaveInOneSend(self):
        """
        A connection in several runs of one delivery gets them in one
        socket.send, in order; one in a single run gets that run.
        """
        (sink_a, client_a), (sink_b, client_b) = self.pair(), self.pair()
        a, b = self.outbox(sink_a), self.outbox(sink_b)
        first, second = self.run_frames(3), [(event("b", 9), "b", "trade")]
        self.fanout.publish_run(first, [a, b])
        self.fanout.publish_run(second, [a])
        self.fanout.flush()
        self.assertEqual((self.stats.direct, self.stats.writes, self.stats.delivered), (2, 2, 7))
        both = b"".join(f for f, _, _ in first + second)
        data = yield client_a.read(len(both))
        self.assertEqual(data, both)
        only = b"".join(f for f, _, _ in first)
        data = yield client_b.read(len(only))
        self.assertEqual(data, only)
        self.assertEqual(self.stats.bytes_out, len(both) + len(only))

    @inlineCallbacks
    def test_runAfterQueuedReplyKeepsOrder(self):
        """
        A run for a connection with a reply already waiting in its Outbox
        goes behind the reply, in the same write.
        """
        sink, client = self.pair()
        box = self.outbox(sink)
        box.push_control(b"reply")
        run = self.run_frames(3)
        self.fanout.publish_run(run, [box])
        self.fanout.flush()
        expected = b"reply" + b"".join(f for f, _, _ in run)
        data = yield client.read(len(expected))
        self.assertEqual(data, expected)
        self.assertEqual((self.stats.writes, self.stats.delivered), (1, 4))

    @inlineCallbacks
    def test_windowEntriesLeaveInOneDirectSend(self):
        """
        With a flush window, the events flushed one by one within it reach
        each connection in one socket.send (Fanout.flush's inline path joins
        the entries), counted as their frames.
        """
        self.fanout.reconfigure(0.002)
        pairs = [self.pair() for _ in range(2)]
        boxes = [self.outbox(sink) for sink, _ in pairs]
        frames = [event("a", i) for i in range(3)]
        for f in frames:
            self.fanout.publish(f, "a", "trade", boxes)
            self.assertFalse(self.fanout.flush())
        self.assertEqual(self.stats.writes, 0)
        for _, client in pairs:
            data = yield client.read(len(b"".join(frames)))
            self.assertEqual(data, b"".join(frames))
        self.assertEqual((self.stats.direct, self.stats.writes, self.stats.delivered), (2, 2, 6))

    @inlineCallbacks
    def test_runPartialSend(self):
        """A run the kernel takes only part of: the rest goes to Twisted, all arrives in order."""
        sink, client = self.pair(sndbuf=4096, rcvbuf=4096)
        box = self.outbox(sink)
        run = self.run_frames(40, pad=16000)
        expected = b"".join(f for f, _, _ in run)
        self.fanout.publish_run(run, [box])
        self.fanout.flush()
        self.assertEqual((self.stats.partial, self.stats.writes, self.stats.delivered),
                         (1, 1, 40))
        self.assertTrue(0 < held(sink.transport) < len(expected))
        later = [event("a", n) for n in range(40, 45)]
        for f in later:
            box.push(f, "a", "trade")
        self.fanout.flush()
        data = yield client.read(len(expected) + len(b"".join(later)))
        self.assertEqual(data, expected + b"".join(later))
        self.assertEqual(self.stats.bytes_out, len(data))

    @inlineCallbacks
    def test_runRefusedFallsBackToTwisted(self):
        """A run the kernel refuses whole goes to transport.write, after what was ahead."""
        sink, client = self.pair(sndbuf=4096, rcvbuf=4096)
        box = self.outbox(sink)
        junk = client.fill_kernel(sink.transport.socket)
        run = self.run_frames(5)
        expected = b"".join(f for f, _, _ in run)
        self.fanout.publish_run(run, [box])
        self.fanout.flush()
        self.assertEqual((self.stats.fallbacks, self.stats.buffered, self.stats.direct),
                         (1, 1, 0))
        self.assertEqual(held(sink.transport), len(expected))
        data = yield client.read(junk + len(expected))
        self.assertEqual(data, b"\0" * junk + expected)

    def test_noDirectSendOnceClosing(self):
        """
        Once the WebSocket is no longer open (a close frame went out), queued
        frames are discarded, not sent straight to the socket.
        """
        sink, client = self.pair()
        proto = FakeProtocol(sink.transport)
        box = Outbox(proto, self.fanout, policies(), 1 << 20, 5.0, lambda: None)
        self.fanout.publish_run(self.run_frames(3), [box])
        proto.state = WebSocketProtocol.STATE_CLOSING
        self.fanout.flush()
        self.assertEqual((self.stats.writes, self.stats.delivered), (0, 0))
        self.assertEqual(box.queued(), 0)
        with self.assertRaises(BlockingIOError):
            client.sock.recv(100)

    def stall(self, unsent: int) -> tuple[Outbox, Sink]:
        """An outbox (drop, 64 KiB) on a client that never reads; 2 MB pushed at it."""
        sink, client = self.pair(rcvbuf=4096)
        if unsent:
            self.assertTrue(limit_unsent(sink.transport, unsent))
        box = self.outbox(sink, limit=65536)
        n = 0
        for _ in range(400):
            for _ in range(10):
                self.fanout.publish(event("a", n, pad=500), "a", "trade", [box])
                n += 1
            self.fanout.flush()
        return box, sink

    def test_kernelUnsentBytesBounded(self):
        """
        With limit_unsent, the kernel takes little from a client that does not
        read, so the Outbox's limit and policy apply: memory for it stays
        bounded and the excess is dropped and counted.
        """
        box, sink = self.stall(16384)
        kernel = self.stats.bytes_out - held(sink.transport)
        self.assertLess(kernel, 128 * 1024)
        self.assertLessEqual(box.buffered(), 65536)
        self.assertGreater(self.stats.dropped["drop"], 3000)

    def test_kernelTakesAStalledClientsBacklogByDefault(self):
        """
        Why limit_unsent exists: left to its default, the kernel queues
        megabytes for the same client and nothing is ever dropped.
        """
        self.stall(0)
        self.assertGreater(self.stats.bytes_out, 1 << 20)
        self.assertEqual(self.stats.dropped["drop"], 0)

    def test_limitUnsentOnlyOnTCP(self):
        """Transports without a TCP socket are left alone."""
        self.assertFalse(limit_unsent(StringTransport(), 16384))
        sink, _ = self.pair()
        self.assertFalse(limit_unsent(sink.transport, 0))
        sock = sink.transport.socket
        self.assertTrue(limit_unsent(sink.transport, 32768))
        self.assertEqual(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT), 32768)


class NativeCoalescingTests(CoalescingTests):
    """L{CoalescingTests} with the C send loop (nothing inline: every run handed back)."""

    native = True


class NativeFlushWindowTests(FlushWindowTests):
    """L{FlushWindowTests} with the C send loop (used only while the window is 0)."""

    native = True


class NativeRealSocketTests(RealSocketTests):
    """L{RealSocketTests} with the C send loop doing the direct sends."""

    native = True


class NoticeOrderTests(ShardTestCase):
    """
    Notices and replies queued into an Outbox directly never overtake the
    events published before them, kept for the C send loop until the write
    (with the Python loop here; L{NativeNoticeOrderTests} with the C loop).
    """

    settings = {"kafka__topics": {"odin.trades": "trade"}, "outbound__native": "off",
                "keepalive__ping_interval": 0}

    def setUp(self):
        super().setUp()
        self.offset = 99

    def event(self, token: str = "A") -> Event:
        self.offset += 1
        return Event.build(token, "trade", b'{"p":%d}' % self.offset, int(time.time() * 1000),
                           "odin.trades", 0, self.offset, "ep1")

    def hole(self, token: str = "A") -> Hole:
        self.offset += 1
        return Hole("invalid_json", token, "trade", int(time.time() * 1000), "odin.trades", 0,
                    self.offset, "ep1")

    def kinds(self, client) -> list[str]:
        self.advance(0)
        return [m["type"] for m in client.messages()]

    def test_hole_in_place_among_its_batch(self):
        """
        A hole between events of one batch reaches a plain subscriber and
        one with options (a filter) in its place: events, gap, event.
        """
        plain = self.connect()
        self.subscribe(plain, "odin.token.A.trade")
        filtered = self.connect(ip="10.0.0.2")
        filtered.send(text({"type": "subscribe", "channels": ["odin.token.A.trade"],
                            "filter": {"p": {"gte": 0}}}))
        filtered.messages()
        self.shard.delivery.deliver([self.event(), self.event(), self.hole(), self.event()])
        self.assertEqual(self.kinds(plain), ["event", "event", "gap", "event"])
        self.assertEqual(self.kinds(filtered), ["event", "event", "gap", "event"])

    def test_unsubscribed_after_the_events_before_it(self):
        """The unsubscribed answer comes after the events delivered before it."""
        c = self.connect()
        self.subscribe(c, "odin.token.A.trade")
        self.shard.delivery.deliver([self.event(), self.event()])
        c.send(text({"type": "unsubscribe", "channels": ["odin.token.A.trade"]}))
        self.shard.delivery.deliver([self.event()])
        self.assertEqual(self.kinds(c), ["event", "event", "unsubscribed"])

    def test_recovery_answer_between_the_events_around_it(self):
        """A recovery's ack and replay come after the events before it, before the live ones after."""
        c = self.connect()
        self.subscribe(c, "odin.token.B.trade")
        first = self.event("A")
        self.shard.delivery.deliver([first, self.event("A"), self.event("B")])
        pos = json.loads(first.envelope)["pos"]
        c.send(text({"type": "subscribe", "channels": ["odin.token.A.trade"], "since": [pos]}))
        self.shard.delivery.deliver([self.event("A")])
        self.assertEqual(self.kinds(c), ["event", "subscribed", "event", "event"])

    def test_reply_after_the_events_of_a_batch_that_failed(self):
        """
        A delivery that raised before its write leaves its runs to the end
        of the turn: a reply queued meanwhile (a pong) still comes after
        them (with the C loop it went first: the runs were kept, not queued).
        """
        c = self.connect()
        self.subscribe(c, "odin.token.A.trade")
        flush = self.shard.fanout.flush

        def failing() -> bool:
            self.shard.fanout.flush = flush
            raise RuntimeError("a delivery's bug")
        self.shard.fanout.flush = failing
        self.assertRaises(RuntimeError, self.shard.delivery.deliver, [self.event(), self.event()])
        c.send(text({"type": "ping", "id": 1}))
        self.assertEqual(self.kinds(c), ["event", "event", "pong"])


class NativeNoticeOrderTests(NoticeOrderTests):
    """L{NoticeOrderTests} with the C send loop (runs kept until the write)."""

    settings = {**NoticeOrderTests.settings, "outbound__native": "on"}
