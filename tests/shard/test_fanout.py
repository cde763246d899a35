"""
Tests for L{odin_ws.shard.writer}: framing, one write per connection per turn, the
direct-send path on real sockets (whole, partial, refused), the slow-client
policies with memory bounds, and no data frame after a close frame.
"""

from __future__ import annotations

import json
import socket

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.protocol import WebSocketProtocol
from twisted.internet import tcp
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase

from odin_ws.common.twisted_internals import held
from odin_ws.shard.fanout import Fanout, WriteStats, WriteStatsCollector, limit_unsent
from odin_ws.shard.frames import Chunk, text_frame
from odin_ws.shard.outbox import Outbox
from tests.helpers import (
    OPEN,
    PLAIN_UPGRADE,
    Client,
    FakeProtocol,
    Sink,
    StalledTransport,
    handshaken_protocol,
    parse_frames,
    tcp_pair,
)

# -- helpers (tests/test_writepath.py uses some of them too)



def event(channel: str, n: int, pad: int = 60) -> bytes:
    """A text frame of fixed size per C{pad}, carrying its channel and number."""
    return text_frame(json.dumps({"c": channel, "n": "%06d" % n, "p": "x" * pad}).encode())


def events_in(data: bytes) -> list[tuple[str, int]]:
    """(channel, number) of each event frame in C{data}."""
    out = []
    for opcode, payload in parse_frames(data):
        assert opcode == 1, opcode
        doc = json.loads(payload)
        out.append((doc["c"], int(doc["n"])))
    return out




class CountingTransport(StringTransport):
    """A StringTransport that counts write calls."""

    writes = 0

    def write(self, data):
        self.writes += 1
        super().write(data)














def policies(**by_type: str):
    return lambda event_type: by_type.get(event_type, "drop")


# -- tests

class TextFrameTests(SynchronousTestCase):
    def test_headerLengths(self):
        """Lengths 0, 125 (7-bit), 126, 65535 (16-bit) and 65536 (64-bit) parse back exactly."""
        for n, marker, header in ((0, 0, 2), (125, 125, 2), (126, 126, 4), (65535, 126, 4),
                                  (65536, 127, 10)):
            payload = bytes(range(256)) * (n // 256) + b"a" * (n % 256)
            frame = text_frame(payload)
            self.assertEqual(frame[0], 0x81, "FIN + text opcode")
            self.assertEqual(frame[1], marker, "unmasked, length marker")
            self.assertEqual(len(frame), header + n)
            self.assertEqual(parse_frames(frame), [(1, payload)])

    def test_sameBytesAsAutobahn(self):
        """The frame equals what Autobahn itself prepares for an uncompressed text message."""
        factory = WebSocketServerFactory()
        for n in (0, 125, 126, 65535, 65536):
            payload = b"x" * n
            self.assertEqual(text_frame(payload), factory.prepareMessage(payload).payloadHybi)


class CoalescingTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.stats = WriteStats()
        self.fanout = Fanout(self.clock, self.stats)

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
        run = self.run_of("a", 0, 10)
        self.fanout.publish_run(run, boxes)
        self.assertEqual([len(b.queue) for b in boxes], [2, 2, 2])
        self.assertIs(boxes[0].queue[0], boxes[2].queue[0])
        self.assertIsInstance(boxes[0].queue[1], Chunk)
        self.fanout.flush()
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
        [(frame, channel, etype)] = run = self.run_of("a", 0, 1)
        self.fanout.publish_run(run, [box])
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


class RealSocketTests(TestCase):
    """The direct path on real loopback TCP connections and the real reactor."""

    def setUp(self):
        from twisted.internet import reactor
        self.reactor = reactor
        self.stats = WriteStats()
        self.fanout = Fanout(reactor, self.stats)

    def pair(self, **bufs) -> tuple[Sink, Client]:
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
        for turn in range(40):
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


class PolicyTests(SynchronousTestCase):
    """Slow-client policies, with Twisted's real buffer over a stalled fake kernel."""

    frame_size = len(event("a", 0))

    def setUp(self):
        self.clock = Clock()
        self.stats = WriteStats()
        self.fanout = Fanout(self.clock, self.stats)
        self.healthy = [self.make(StringTransport(), "drop") for _ in range(2)]
        self.disconnects = 0

    def make(self, transport, policy: str, limit: int = 1000, grace: float = 5.0) -> Outbox:
        def slow():
            self.disconnects += 1
        return Outbox(FakeProtocol(transport), self.fanout, lambda t: policy, limit, grace,
                      slow)

    def run_turns(self, box: Outbox, turns: int, channels=("a",), per_turn: int = 10,
                  limit: int = 1000, start: int = 0) -> list[tuple[str, int]]:
        """Publish turns of events to C{box} and the healthy outboxes; what was published."""
        published = []
        n = start
        for _ in range(turns):
            turn = []
            for _ in range(per_turn):
                channel = channels[n % len(channels)]
                turn.append((event(channel, n), channel, "t"))
                published.append((channel, n))
                n += 1
            self.send_turn(turn, [box] + self.healthy)
            self.fanout.flush()
            self.assertLessEqual(box.buffered(), limit + self.frame_size)
        return published

    def send_turn(self, turn: list, outboxes: list) -> None:
        """One turn's events, each (frame, channel, event_type), published one by one."""
        for frame, channel, event_type in turn:
            self.fanout.publish(frame, channel, event_type, outboxes)

    def assertHealthyGot(self, published):
        for box in self.healthy:
            self.assertEqual(events_in(box.transport.value()), published)

    def test_dropKeepsMemoryBoundedAndCounts(self):
        """Drop: bytes waiting stay within the limit, the rest is dropped and counted."""
        t = StalledTransport()
        box = self.make(t, "drop")
        published = self.run_turns(box, 30)
        self.assertHealthyGot(published)
        self.assertGreater(self.stats.dropped["drop"], 0)
        t.drain()
        got = events_in(bytes(t.wire))
        self.assertEqual(got, sorted(set(got), key=lambda e: e[1]))
        self.assertEqual(len(got) + self.stats.dropped["drop"], len(published))
        self.assertEqual(box.buffered(), 0)
        self.assertGreaterEqual(self.stats.high_water, 1000 - self.frame_size)

    def test_conflateKeepsLatestPerChannelInOrder(self):
        """
        Conflate: waiting frames of a channel are replaced by its newest; the
        client, once it reads, sees each channel in order, ending with its
        latest event, within the memory bound.
        """
        t = StalledTransport()
        box = self.make(t, "conflate")
        channels = ("a", "b", "c")
        # A first small turn puts a little in Twisted's buffer; later turns queue.
        published = self.run_turns(box, 1, channels, per_turn=3)
        published += self.run_turns(box, 20, channels, start=3)
        self.assertHealthyGot(published)
        self.assertGreater(self.stats.conflated, 0)
        self.assertEqual(self.stats.dropped["conflate"], 0)
        t.drain()
        got = events_in(bytes(t.wire))
        for channel in channels:
            mine = [n for c, n in got if c == channel]
            self.assertEqual(mine, sorted(set(mine)))
            self.assertEqual(mine[-1], max(n for c, n in published if c == channel))
        self.assertEqual(len(got) + self.stats.conflated, len(published))

    def test_conflateDropsWhenNothingToReplace(self):
        """Conflate with no waiting frame of the channel and no room: dropped and counted."""
        t = StalledTransport()
        box = self.make(t, "conflate")
        box.push(event("a", 0, pad=900), "a", "t")
        self.fanout.flush()                      # all of it now in Twisted's buffer
        box.push(event("b", 1), "b", "t")
        self.assertEqual(self.stats.dropped["conflate"], 1)
        self.assertEqual(box.queued(), 0)

    def test_pausedAtTwistedHighWater(self):
        """Past Twisted's 64 KiB high-water mark frames wait here until it drains."""
        t = StalledTransport()
        box = self.make(t, "drop", limit=1 << 20)
        big = [event("a", i, pad=20000) for i in range(4)]
        for f in big:
            box.push(f, "a", "t")
        self.fanout.flush()
        self.assertTrue(box.paused)
        self.assertTrue(t.producerPaused)
        box.push(event("a", 4), "a", "t")
        self.fanout.flush()
        self.assertEqual(self.stats.writes, 1)
        t.drain()
        self.assertFalse(box.paused)
        self.assertEqual([n for _, n in events_in(bytes(t.wire))], list(range(5)))

    def test_resumeWhileClosingReleasesTransport(self):
        """
        A connection closed (loseConnection) while the Outbox is paused: on
        resume the Outbox closes and unregisters, so Twisted can finish the
        close, and what waited is not written.
        """
        t = StalledTransport()
        box = self.make(t, "drop", limit=1 << 20)
        box.push(event("a", 0, pad=70000), "a", "t")
        self.fanout.flush()
        box.push(event("a", 1), "a", "t")
        self.assertTrue(box.paused)
        t.loseConnection()
        t.drain()
        self.assertTrue(box.closed)
        self.assertIsNone(t.producer)
        self.assertEqual([n for _, n in events_in(bytes(t.wire))], [0])

    def test_disconnectAfterGraceByTimer(self):
        """Disconnect: over the limit for the grace period, closed once by the timer."""
        t = StalledTransport()
        box = self.make(t, "disconnect")
        published = self.run_turns(box, 3)
        self.assertGreater(self.stats.dropped["disconnect"], 0)
        self.assertEqual(self.disconnects, 0)
        self.clock.advance(4.9)
        self.assertEqual(self.disconnects, 0)
        self.clock.advance(0.1)
        self.assertEqual((self.disconnects, self.stats.slow_disconnects), (1, 1))
        self.assertTrue(box.closed)
        self.assertIsNone(t.producer)
        self.assertEqual(box.queued(), 0)
        published += self.run_turns(box, 3, start=len(published))
        self.clock.advance(10)
        self.assertEqual(self.disconnects, 1)
        self.assertHealthyGot(published)

    def test_disconnectOnLaterPushRunsAfterThePublishLoop(self):
        """A push past the grace closes the connection, its callback running at flush."""
        t = StalledTransport()
        box = self.make(t, "disconnect")
        self.run_turns(box, 3)
        self.clock.rightNow += 5.0              # the push comes before the timer runs
        self.fanout.publish(event("a", 999), "a", "t", [box])
        self.assertTrue(box.closed)
        self.assertEqual(self.disconnects, 0)
        self.fanout.flush()
        self.assertEqual(self.disconnects, 1)
        self.clock.advance(0)
        self.assertEqual((self.disconnects, self.stats.slow_disconnects), (1, 1))

    def test_disconnectSparedWhenClientCatchesUp(self):
        """A client that drains within the grace period is not closed."""
        t = StalledTransport()
        box = self.make(t, "disconnect")
        self.run_turns(box, 3)
        self.clock.advance(2)
        t.drain()
        self.clock.advance(10)
        self.assertEqual(self.disconnects, 0)
        self.assertFalse(box.closed)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class RunPolicyTests(PolicyTests):
    """The policies when events come as runs (publish_run), as the shard sends them."""

    def send_turn(self, turn: list, outboxes: list) -> None:
        self.fanout.publish_run(turn, outboxes)

    def test_runWithoutRoomTakenFrameByFrame(self):
        """
        An outbox without room for a whole run takes its frames one by one:
        those that fit, in order, the rest dropped and counted; others get all.
        """
        t = StalledTransport()
        box = self.make(t, "drop", limit=3 * self.frame_size)
        t.producerPaused = box.paused = True     # nothing leaves: only the queue counts
        run = [(event("a", n), "a", "t") for n in range(10)]
        self.fanout.publish_run(run, [box] + self.healthy)
        self.assertEqual(box.queue[1::2], ["a", "a", "a"])
        self.assertEqual(self.stats.dropped["drop"], 7)
        self.fanout.flush()
        self.assertHealthyGot([("a", n) for n in range(10)])
        box.resumeProducing()
        t.drain()
        self.assertEqual(events_in(bytes(t.wire)), [("a", 0), ("a", 1), ("a", 2)])

    def test_conflateSplitsWaitingRuns(self):
        """Runs waiting in the queue are split so conflation keeps the newest per channel."""
        t = StalledTransport()
        box = self.make(t, "conflate", limit=10 * self.frame_size)
        t.producerPaused = box.paused = True
        first = [(event(c, n), c, "t") for n, c in enumerate("abab")]
        self.fanout.publish_run(first, [box])
        self.assertIsInstance(box.queue[1], Chunk)
        for n in range(4, 16):
            c = "ab"[n % 2]
            self.fanout.publish(event(c, n), c, "t", [box])
        self.assertGreater(self.stats.conflated, 0)
        box.resumeProducing()
        t.drain()
        got = events_in(bytes(t.wire))
        for channel in "ab":
            mine = [n for c, n in got if c == channel]
            self.assertEqual(mine, sorted(set(mine)))
            self.assertEqual(mine[-1], 14 if channel == "a" else 15)
        self.assertEqual(len(got) + self.stats.conflated, 16)
        self.assertEqual(self.stats.delivered, len(got))


class ClosedProtocolTests(SynchronousTestCase):
    def test_noDataFrameAfterCloseFrame(self):
        """
        Frames queued when Autobahn sends its close frame are discarded: the
        close frame is the last frame on the wire, even after a resume.
        """
        proto, transport = handshaken_protocol()
        fanout = Fanout(Clock(), WriteStats())
        box = Outbox(proto, fanout, policies(), 1 << 20, 5.0, lambda: None)
        box.push(event("a", 1), "a", "t")
        fanout.flush()
        box.push(event("a", 2), "a", "t")
        proto.sendClose(4008, "slow consumer")
        self.assertNotEqual(proto.state, OPEN)
        fanout.flush()
        box.push(event("a", 3), "a", "t")
        box.resumeProducing()
        fanout.flush()
        frames = parse_frames(transport.value())
        self.assertEqual([op for op, _ in frames], [1, 8])
        self.assertEqual(frames[1][1][:2], (4008).to_bytes(2, "big"))

    def test_slowDisconnectThroughAutobahn(self):
        """The shard's callback (sendClose 4008) runs once; no data frame follows it."""
        proto, transport = handshaken_protocol()
        clock = Clock()
        fanout = Fanout(clock, WriteStats())
        box = Outbox(proto, fanout, policies(t="disconnect"), 1000, 1.0,
                     lambda: proto.sendClose(4008, "slow consumer"))
        box.pauseProducing()                     # as Twisted would for a stalled client
        for i in range(50):
            box.push(event("a", i), "a", "t")
        fanout.flush()
        clock.advance(1.0)
        fanout.flush()
        frames = parse_frames(transport.value())
        self.assertEqual([op for op, _ in frames], [8])
        self.assertIsNone(transport.producer)
