"""
Tests for L{odin_ws.shard.delivery.deflate} and the fan-out's variants:
frames compressed as RFC 7692 wants them (RSV1, no context takeover: each
decodes alone), the threshold, the offers accepted and declined, and each
connection getting its own variant of an event, compressed once for all,
through the Python and the C send loops.
"""

from __future__ import annotations

import json
import zlib

from autobahn.websocket.compress_deflate import PerMessageDeflateOffer
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from odin_ws.shard.delivery import deflate
from odin_ws.shard.delivery.deflate import Deflate, FrameDeflater, accept, valid_offer
from odin_ws.shard.delivery.fanout import Fanout
from odin_ws.shard.delivery.frames import text_frame
from odin_ws.shard.delivery.outbox import Outbox
from odin_ws.shard.delivery.writestats import WriteStats, WriteStatsCollector
from tests.helpers import CountingTransport, FakeProtocol, SendLoop, policies, tcp_pair

#: The answer to an offer without a window.
BOTH_NO_TAKEOVER = "permessage-deflate; server_no_context_takeover; client_no_context_takeover"


def server_frames(data: bytes) -> list[tuple[int, bytes]]:
    """(first byte, payload) of each unmasked server frame in C{data}."""
    out, i = [], 0
    while i < len(data):
        b0, n, i = data[i], data[i + 1] & 0x7F, i + 2
        if n == 126:
            n, i = int.from_bytes(data[i:i + 2], "big"), i + 2
        elif n == 127:
            n, i = int.from_bytes(data[i:i + 8], "big"), i + 8
        if i + n > len(data):
            raise ValueError("a frame cut short")
        out.append((b0, data[i:i + n]))
        i += n
    return out


def inflate(payload: bytes, bits: int = 15) -> bytes:
    """A compressed message as a client with a fresh inflater reads it (RFC 7692, 7.2.2)."""
    return zlib.decompressobj(-bits).decompress(payload + b"\x00\x00\xff\xff")


def messages(data: bytes) -> list[tuple[bool, dict]]:
    """(compressed, JSON) of each frame in C{data}, as a client that negotiated deflate reads it."""
    out = []
    for b0, payload in server_frames(data):
        compressed = bool(b0 & 0x40)
        out.append((compressed, json.loads(inflate(payload) if compressed else payload)))
    return out


def price(n: int, pad: int = 200) -> bytes:
    """An event frame that compresses well (C{pad} repeated bytes)."""
    return text_frame(json.dumps({"c": "a", "n": n, "pad": "ab" * (pad // 2)}).encode())


class FrameDeflaterTests(SynchronousTestCase):
    def test_frameIsRsv1AndDecodesAlone(self):
        """
        A compressed frame is final, text, RSV1 set; every message of the
        shared stream decodes with a fresh inflater (no context taken over).
        """
        deflater = FrameDeflater(15, 0)
        for n in range(3):
            frame = price(n)
            out = deflater.frame(frame)
            [(b0, payload)] = server_frames(out)
            self.assertEqual(b0, 0xC1)
            self.assertLess(len(out), len(frame))
            self.assertEqual(inflate(payload), deflate.payload_of(frame))

    def test_longPayloadsKeepTheirLengthForms(self):
        """Payloads of 126+ and 64 Ki+ bytes (16- and 64-bit lengths) survive both ways."""
        deflater = FrameDeflater(15, 0)
        for size in (200, 70_000, 300_000):
            body = json.dumps({"x": [str(i) for i in range(size // 8)]}).encode()[:size]
            frame = text_frame(body)
            self.assertEqual(deflate.payload_of(frame), body)
            [(_, payload)] = server_frames(deflater.frame(frame))
            self.assertEqual(inflate(payload), body)

    def test_smallWindowHonoured(self):
        """Compressed for a 9-bit window, a client with a 9-bit window reads it."""
        frame = price(1, pad=2000)
        [(_, payload)] = server_frames(FrameDeflater(9, 0).frame(frame))
        self.assertEqual(inflate(payload, bits=9), deflate.payload_of(frame))

    def test_underTheThresholdStaysPlain(self):
        """A payload under min_bytes, or one that would not shrink, is the plain frame itself."""
        small = text_frame(b'{"p":1}')
        self.assertIs(FrameDeflater(15, 128).frame(small), small)
        noise = text_frame(bytes(range(33, 127)) * 2)   # random-like for a tiny message
        out = FrameDeflater(15, 0).frame(noise)
        self.assertTrue(out is noise or len(out) < len(noise))
        incompressible = text_frame(b"x")
        self.assertIs(FrameDeflater(15, 0).frame(incompressible), incompressible)


class DeflateTests(SynchronousTestCase):
    def test_variantsAndCounts(self):
        """Variants 1..7 are windows 9..15; frames compressed are counted, open connections per variant."""
        self.assertEqual([deflate.variant(b) for b in (9, 15)], [1, 7])
        stats = WriteStats()
        d = Deflate(stats, True, 0)
        d.frame(7, price(1))
        d.frame(7, text_frame(b"x"))     # not smaller: not counted
        self.assertEqual(stats.deflated, 1)
        a, b = object(), object()
        d.opened(7, a)
        d.opened(1, b)
        d.closed(1, b)
        self.assertEqual(d.in_use(), [7])

    def test_usedBy(self):
        """
        The variants a set of recipients uses: none while no compressed
        connection is open, else those of the recipients only, whatever the
        collection they come in (a set, an index's keys view, a tuple).
        """
        d = Deflate(WriteStats(), True, 0)
        plain = [object() for _ in range(5)]
        self.assertEqual(d.used_by(plain), [])
        big, small = object(), object()
        d.opened(7, big)
        d.opened(1, small)
        for make in (set, tuple, lambda boxes: dict.fromkeys(boxes).keys()):
            self.assertEqual(d.used_by(make(plain)), [], make)
            self.assertEqual(d.used_by(make(plain + [big])), [7], make)
            self.assertEqual(d.used_by(make([small] + plain + [big])), [1, 7], make)
        self.assertEqual(d.used_by({small}), [1])

    def test_reconfiguredThreshold(self):
        """A new threshold applies to the next events."""
        d = Deflate(WriteStats(), True, 0)
        frame = price(1, pad=100)
        self.assertIsNot(d.frame(7, frame), frame)
        d.reconfigure(True, 10_000)
        self.assertIs(d.frame(7, frame), frame)


class OfferTests(SynchronousTestCase):
    def test_acceptAnswersNoContextTakeover(self):
        """
        The answer always names server_no_context_takeover (asked for or
        not), the window asked for, and client_no_context_takeover.
        """
        answer = accept([PerMessageDeflateOffer.parse({})])
        self.assertEqual(answer.get_extension_string(),
                         BOTH_NO_TAKEOVER)
        answer = accept([PerMessageDeflateOffer.parse({"server_max_window_bits": ["10"],
                                                       "server_no_context_takeover": [True]})])
        self.assertEqual(answer.get_extension_string(),
                         "permessage-deflate; server_no_context_takeover; "
                         "server_max_window_bits=10; client_no_context_takeover")

    def test_offersThisServerCannotHonour(self):
        """
        Unknown, repeated or invalid parameters, and a window of 8 (which
        zlib's raw deflate does not make), are not valid offers; the usual
        ones are.
        """
        for params in ({"foo": [True]}, {"server_max_window_bits": ["8"]},
                       {"server_max_window_bits": ["16"]}, {"server_max_window_bits": ["x"]},
                       {"server_max_window_bits": [True]},
                       {"client_max_window_bits": ["9", "10"]},
                       {"server_no_context_takeover": ["1"]}):
            self.assertFalse(valid_offer(params), params)
        for params in ({}, {"client_max_window_bits": [True]},
                       {"server_max_window_bits": ["9"], "client_no_context_takeover": [True]}):
            self.assertTrue(valid_offer(params), params)
        self.assertIsNone(accept([]))


class VariantFanoutTests(SendLoop, SynchronousTestCase):
    """Connections of different variants on one run, on fake transports."""

    def setUp(self):
        self.clock = Clock()
        self.stats = WriteStats()
        self.deflate = Deflate(self.stats, True, 0)
        self.fanout = Fanout(self.clock, self.stats, native=self.send_loop(),
                             deflate=self.deflate)

    def outbox(self, variant: int = 0) -> Outbox:
        box = Outbox(FakeProtocol(CountingTransport()), self.fanout, policies(), 1 << 20, 5.0,
                     lambda: None)
        box.variant = variant
        if variant:
            self.deflate.opened(variant, box)
        return box

    def test_eachGetsItsVariantCompressedOnce(self):
        """
        Plain connections get the plain frames; compressed ones (two window
        sizes) the compressed frames, each event compressed once per window
        whatever the number of connections; the same events for all.
        """
        plain = [self.outbox() for _ in range(2)]
        big = [self.outbox(7) for _ in range(3)]
        small = [self.outbox(1)]
        run = [(price(n), "a", "price") for n in range(4)]
        self.fanout.publish_run(run, plain + big + small)
        self.fanout.publish(price(9), "a", "price", plain + big + small)
        self.fanout.flush()
        want = [json.loads(deflate.payload_of(f)) for f, _, _ in run]
        want.append(json.loads(deflate.payload_of(price(9))))
        for box in plain:
            self.assertEqual(messages(box.transport.value()), [(False, m) for m in want])
        for box in big + small:
            self.assertEqual(messages(box.transport.value()), [(True, m) for m in want])
        self.assertEqual(self.stats.deflated, 2 * 5)
        self.assertEqual(self.stats.delivered, 6 * 5)
        plain_bytes = sum(len(f) for f, _, _ in run) + len(price(9))
        self.assertEqual(self.stats.deflate_plain, 4 * plain_bytes)
        wire = sum(len(b.transport.value()) for b in big + small)
        self.assertEqual(self.stats.deflate_wire, wire)
        self.assertLess(wire, 4 * plain_bytes)

    def test_noCompressionWithoutACompressedConnection(self):
        """With only plain connections, nothing is compressed."""
        boxes = [self.outbox() for _ in range(3)]
        self.fanout.publish_run([(price(n), "a", "price") for n in range(3)], boxes)
        self.fanout.flush()
        self.assertEqual(self.stats.deflated, 0)

    def test_compressedOnlyForItsRecipients(self):
        """
        A run whose recipients are all plain is compressed for nobody, even
        while compressed connections are open on the shard (subscribed to
        other channels); a run that reaches one of them is, for its window
        only.
        """
        plain = [self.outbox() for _ in range(3)]
        elsewhere = [self.outbox(7), self.outbox(1)]
        self.fanout.publish_run([(price(n), "a", "price") for n in range(3)], plain)
        self.fanout.flush()
        self.assertEqual(self.stats.deflated, 0)
        self.fanout.publish(price(9), "b", "price", [plain[0], elsewhere[0]])
        self.fanout.flush()
        self.assertEqual(self.stats.deflated, 1)
        self.assertEqual(elsewhere[1].transport.value(), b"")

    def test_perConnectionRunsGoPlain(self):
        """
        A run for one connection (compress=False: a recovery, a snapshot)
        reaches a compressing connection plain, compressed nothing, counted
        nowhere in the compression bytes.
        """
        box = self.outbox(7)
        run = [(price(n), "a", "price") for n in range(3)]
        self.fanout.publish_run(run, (box,), compress=False)
        self.fanout.flush()
        want = [json.loads(deflate.payload_of(f)) for f, _, _ in run]
        self.assertEqual(messages(box.transport.value()), [(False, m) for m in want])
        self.assertEqual((self.stats.deflated, self.stats.deflate_plain), (0, 0))

    def test_overflowTakesTheVariantsFrames(self):
        """
        A compressed connection without room for a whole run takes its
        compressed frames one by one under its policy (conflate: the newest).
        """
        box = self.outbox(7)
        box.pauseProducing()
        box.room = box.cap = 150
        run = [(price(n), "a", "price") for n in range(6)]
        self.fanout.publish_run(run, [box])
        self.fanout.flush()
        self.assertTrue(all(f[0] == 0xC1 for f in box.queue[::2] if f), box.queue)
        box.resumeProducing()
        got = [m["n"] for compressed, m in messages(box.transport.value()) if compressed]
        self.assertEqual(got[-1], 5)

    def test_collector(self):
        """The counters reach /metrics: frames compressed, bytes before and after, offers."""
        self.stats.deflated, self.stats.deflate_plain, self.stats.deflate_wire = 3, 900, 300
        self.stats.offers["invalid"] = 2
        got = {(m.name, tuple(sorted(s.labels.items()))): s.value
               for m in WriteStatsCollector(self.stats).collect() for s in m.samples}
        self.assertEqual(got[("odinws_outbound_deflated_frames", ())], 3)
        self.assertEqual(got[("odinws_outbound_deflate_bytes", (("stage", "plain"),))], 900)
        self.assertEqual(got[("odinws_outbound_deflate_bytes", (("stage", "wire"),))], 300)
        self.assertEqual(got[("odinws_deflate_offers", (("result", "invalid"),))], 2)


class VariantFlushWindowTests(SynchronousTestCase):
    """Variants under a flush window (outbound.flush_delay): queued per variant, written at its end."""

    def test_windowKeepsEachVariant(self):
        """
        Events of one window reach plain and compressing connections in one
        write each, in order, each connection its own variant.
        """
        clock = Clock()
        stats = WriteStats()
        d = Deflate(stats, True, 0)
        fanout = Fanout(clock, stats, delay=0.01, deflate=d)
        boxes = []
        for v in (0, 7):
            box = Outbox(FakeProtocol(CountingTransport()), fanout, policies(), 1 << 20, 5.0,
                         lambda: None)
            box.variant = v
            boxes.append(box)
        d.opened(7, boxes[1])
        frames = [price(n) for n in range(3)]
        fanout.publish_run([(f, "a", "price") for f in frames[:2]], boxes)
        fanout.publish(frames[2], "a", "price", boxes)
        self.assertFalse(fanout.flush())
        clock.advance(0.01)
        want = [json.loads(deflate.payload_of(f)) for f in frames]
        for box in boxes:
            self.assertEqual(box.transport.writes, 1)
            self.assertEqual(messages(box.transport.value()),
                             [(box.variant != 0, m) for m in want])
        self.assertEqual(stats.deflated, 3)


class NativeVariantFanoutTests(VariantFanoutTests):
    """L{VariantFanoutTests} with the C send loop (nothing inline: every run handed back)."""

    native = True


class VariantSocketTests(SendLoop, TestCase):
    """Variants on real loopback TCP connections: the direct sends pick each one's buffers."""

    def setUp(self):
        from twisted.internet import reactor
        self.reactor = reactor
        self.stats = WriteStats()
        self.deflate = Deflate(self.stats, True, 0)
        self.fanout = Fanout(reactor, self.stats, native=self.send_loop(), deflate=self.deflate)

    def pair(self, variant: int):
        sink, client = tcp_pair(self.reactor)

        def cleanup():
            client.sock.close()
            sink.transport.abortConnection()
            return sink.lost
        self.addCleanup(cleanup)
        box = Outbox(FakeProtocol(sink.transport), self.fanout, lambda t: "drop", 1 << 24, 5.0,
                     lambda: None)
        box.variant = variant
        if variant:
            self.deflate.opened(variant, box)
        return box, client

    @inlineCallbacks
    def test_directSendsOfEachVariant(self):
        """
        Two runs in one write: each connection gets its variant of both in
        one direct send, and reads the same events.
        """
        pairs = [self.pair(v) for v in (0, 7, 0, 3)]
        boxes = [box for box, _ in pairs]
        runs = [[(price(n), "a", "price") for n in range(k, k + 3)] for k in (0, 3)]
        for run in runs:
            self.fanout.publish_run(run, boxes)
        self.fanout.flush()
        self.assertEqual((self.stats.direct, self.stats.delivered), (4, 24))
        want = [json.loads(deflate.payload_of(f)) for run in runs for f, _, _ in run]
        for box, client in pairs:
            data = yield client.read(lambda data: len(complete(data)) == len(want))
            self.assertEqual(messages(data), [(box.variant != 0, m) for m in want])
        self.assertEqual(self.stats.deflated, 2 * 6)


def complete(data: bytes) -> list[tuple[int, bytes]]:
    """The frames of C{data} if it ends with a complete frame, else none."""
    try:
        return server_frames(data)
    except (IndexError, ValueError):
        return []


class NativeVariantSocketTests(VariantSocketTests):
    """L{VariantSocketTests} with the C send loop doing the direct sends."""

    native = True
