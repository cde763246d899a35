"""
Tests of C{odinws-loadtest}: its statistics (histogram percentiles, gap and
duplicate detection, the completeness check), the client's frame handling
on a fake transport, the report, argument checks, and real runs: one
against a port nobody listens on, one against a real node with events
produced, which must lose nothing.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import struct
import threading
import time
import uuid
from typing import Any

from confluent_kafka import Producer
from twisted.trial import unittest

from odinws_tools.loadtest import run as loadtest
from odinws_tools.loadtest.client import Conn, mask_frame
from odinws_tools.loadtest.report import histogram_chart, line_chart, verdict
from odinws_tools.loadtest.stats import (
    Completeness,
    Histogram,
    SeqCheck,
    diff_series,
    evaluate,
    key_series,
    matches,
    missing_everywhere,
)
from odinws_tools.loadtest.worker import WorkerSpec, patterns_for
from tests.helpers.broker import FAST_KAFKA, shared_broker
from tests.helpers.node import Node, free_port


class HistogramTests(unittest.TestCase):

    def test_percentiles_within_resolution(self):
        """Percentiles of 1..1000 ms are within the 2% bucket width; the max is exact."""
        h = Histogram()
        for ms in range(1, 1001):
            h.add(float(ms))
        for q, want in ((50, 500), (95, 950), (99, 990)):
            got = h.percentile(q)
            self.assertTrue(want <= got <= want * 1.021, (q, got))
        self.assertEqual(h.percentile(100), 1000.0)
        self.assertEqual(h.max, 1000.0)
        self.assertAlmostEqual(h.mean(), 500.5)

    def test_empty(self):
        """An empty histogram has no percentiles rather than zeros."""
        h = Histogram()
        self.assertIsNone(h.percentile(50))
        self.assertEqual(h.summary()["p99"], None)
        self.assertEqual(h.bins(), [])

    def test_merge_and_wire(self):
        """Merging per-worker histograms (sent as plain tuples) equals one histogram of all values."""
        a, b, both = Histogram(), Histogram(), Histogram()
        for i, ms in enumerate([0.5, 3, 7, 40, 41, 300, 2500, 0.001, -2]):
            (a if i % 2 else b).add(ms)
            both.add(ms)
        merged = Histogram.from_wire(a.to_wire()).merge(Histogram.from_wire(b.to_wire()))
        self.assertEqual(merged.counts, both.counts)
        self.assertEqual(merged.summary(), both.summary())
        # Values at or below 0.01 ms (clock granularity) share the first bucket.
        self.assertEqual(both.counts[0], 2)

    def test_bins_cover_all_counts(self):
        """Plot bins are log-spaced, ordered, and hold every count."""
        h = Histogram()
        for ms in (1, 2, 5, 10, 20, 50, 100, 1000):
            h.add(ms)
        bins = h.bins()
        self.assertEqual(sum(n for _, _, n in bins), 8)
        self.assertEqual(bins, sorted(bins))
        for lo, hi, _ in bins:
            self.assertAlmostEqual(hi / lo, 10 ** 0.1)


class SeqCheckTests(unittest.TestCase):

    def test_in_order(self):
        """Consecutive seqs per channel are neither gaps nor duplicates, whatever the first one."""
        s = SeqCheck()
        for seq in (7, 8, 9):
            self.assertEqual(s.observe("a", seq), 0)
        self.assertEqual(s.observe("b", 1), 0)
        self.assertEqual((s.gaps, s.duplicates), (0, 0))

    def test_gap_and_duplicate(self):
        """
        A skip counts the skipped events; a repeat or an older seq is a
        duplicate; channels are separate.
        """
        s = SeqCheck()
        s.observe("a", 1)
        self.assertEqual(s.observe("a", 4), 2)
        self.assertEqual(s.observe("a", 4), -1)
        self.assertEqual(s.observe("a", 2), -1)
        self.assertEqual(s.observe("b", 10), 0)
        self.assertEqual(s.observe("a", 5), 0)
        self.assertEqual((s.gaps, s.duplicates), (2, 2))


class CompletenessTests(unittest.TestCase):

    def test_matches(self):
        """Wildcard segments match any token or type, nothing else does."""
        self.assertTrue(matches("odin.token.*.*", "odin.token.A.trade"))
        self.assertTrue(matches("odin.token.A.*", "odin.token.A.price"))
        self.assertFalse(matches("odin.token.A.*", "odin.token.B.price"))
        self.assertFalse(matches("odin.token.*.trade", "odin.token.A.price"))

    def test_expected_window(self):
        """Expected events are those of covered channels with ts after the subscription, up to the end."""
        events = {"odin.token.A.trade": {1: 100, 2: 200, 3: 300},
                  "odin.token.B.trade": {1: 150, 2: 250}}
        c = Completeness(events, end_ms=260)
        self.assertEqual(c.expected(("odin.token.*.*",), 100.5), 3)   # A2 B1 B2
        self.assertEqual(c.expected(("odin.token.A.*",), 99), 2)      # A1 A2
        self.assertEqual(c.expected(("odin.token.C.*",), 0), 0)

    def test_evaluate_finds_missing_gaps_and_duplicates(self):
        """One worker's connection missed an event another received: it is counted missing."""
        def final(seen, conns, gaps=None, dups=None):
            return {"seen": seen, "conns": conns, "gaps": gaps or {}, "duplicates": dups or {}}
        ch = "odin.token.A.trade"
        finals = [
            # connection 0 got all three events in the window
            final({ch: {1: 100, 2: 200, 3: 300}}, [(0, 50.0, 3, 3, 0, 0)]),
            # connection 1 subscribed at the same time but got two; one dup seen
            final({ch: {1: 100, 3: 300}}, [(1, 50.0, 2, 3, 1, 1)], {ch: 1}, {ch: 1}),
        ]
        result = evaluate(finals, lambda g: ("odin.token.*.*",), hold_end_ms=1000)
        self.assertEqual((result["expected"], result["received"], result["missing"]), (6, 5, 1))
        self.assertEqual(result["connections_missing_events"], 1)
        self.assertEqual(result["worst_connections"], [{"connection": 1, "missing": 1}])
        self.assertEqual((result["gaps"], result["duplicates"]), (1, 1))
        self.assertEqual(result["missing_everywhere"], 0)

    def test_missing_everywhere(self):
        """A seq nobody received shows as a hole between the lowest and highest seen."""
        self.assertEqual(missing_everywhere({"a": [3, 4, 6], "b": [1, 2]}), {"a": 1})


class _FakeTransport:
    def __init__(self):
        self.written = b""
        self.closed = self.aborted = False

    def write(self, data):
        self.written += data

    def close(self):
        self.closed = True

    def abort(self):
        self.aborted = True


class _FakeWorker:
    """The attributes of L{odinws_tools.loadtest.worker.Worker} a connection uses."""

    def __init__(self, loop):
        self.loop = loop
        self.spec = WorkerSpec(index=0, workers=1, address=("127.0.0.1", 1),
                               host_header="127.0.0.1:1", path="/ws", connections=1, ramp=1.0,
                               start=0.0, hold_end=0.0, close_at=0.0)
        self.seq_field = "seq"
        self.hold_end_ms = time.time() * 1000 + 60_000
        self.tick_hist = Histogram()
        self.tick_events = self.no_seq = self.malformed = self.lost = 0
        self.gaps, self.duplicates, self.seen = {}, {}, {}


def _frame(opcode: int, payload: bytes) -> bytes:
    n = len(payload)
    head = struct.pack("!BB", 0x80 | opcode, n) if n < 126 else struct.pack(
        "!BBH", 0x80 | opcode, 126, n)
    return head + payload


def _unmask(frame: bytes) -> tuple[int, bytes]:
    n = frame[1] & 0x7F
    head = 2 if n < 126 else 4
    n = n if n < 126 else struct.unpack("!H", frame[2:4])[0]
    mask = frame[head:head + 4]
    body = frame[head + 4:head + 4 + n]
    return frame[0] & 0x0F, bytes(b ^ mask[i % 4] for i, b in enumerate(body))


class ConnTests(unittest.TestCase):
    """The client's handshake and frame handling, fed byte by byte where it matters."""

    def setUp(self):
        self.loop = asyncio.new_event_loop()
        self.addCleanup(self.loop.close)
        # Futures' done callbacks run on the loop: let them (no unretrieved warnings).
        self.addCleanup(self.loop.run_until_complete, asyncio.sleep(0))
        self.worker = _FakeWorker(self.loop)
        self.conn = Conn(self.worker, 0, ("odin.token.*.*",))
        self.transport = _FakeTransport()
        self.conn.connection_made(self.transport)

    def _accept(self) -> bytes:
        request = self.transport.written
        key = request.split(b"Sec-WebSocket-Key: ")[1].split(b"\r\n")[0]
        accept = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11")
                                  .digest())
        self.transport.written = b""
        return (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n")

    def _event(self, seq: int, channel="odin.token.A.trade") -> bytes:
        ts = int(time.time() * 1000) + 1000
        return _frame(1, json.dumps({"type": "event", "channel": channel,
                                     "data": {"seq": seq}, "ts": ts}).encode())

    def test_subscribe_then_events_split_across_reads(self):
        """
        After 101 the client subscribes (masked frame); events split anywhere
        are all counted, gaps and duplicates too.
        """
        self.conn.data_received(self._accept())
        self.assertTrue(self.conn.opened.done())
        opcode, body = _unmask(self.transport.written)
        self.assertEqual(opcode, 1)
        self.assertEqual(json.loads(body)["channels"], ["odin.token.*.*"])
        ack = _frame(1, b'{"type":"subscribed","channels":["odin.token.*.*"],"id":0}')
        stream = ack + b"".join(self._event(s) for s in (1, 2, 4, 4, 5)) + self._event(
            "x", "odin.token.B.trade")
        for i in range(len(stream)):
            self.conn.data_received(stream[i:i + 1])
        self.assertTrue(self.conn.subscribed.done())
        self.assertEqual(self.conn.events, 6)
        self.assertEqual((self.conn.seqs.gaps, self.conn.seqs.duplicates), (1, 1))
        self.assertEqual(self.worker.gaps, {"odin.token.A.trade": 1})
        self.assertEqual(self.worker.duplicates, {"odin.token.A.trade": 1})
        self.assertEqual(self.worker.no_seq, 1)
        self.assertEqual(self.conn.in_window, 4)
        self.assertEqual(sorted(self.worker.seen["odin.token.A.trade"]), [1, 2, 4, 5])
        self.assertEqual(self.worker.tick_hist.n, 6)

    def test_ping_and_large_frame(self):
        """A ping is answered with a masked pong of the same payload; 16-bit lengths parse."""
        self.conn.data_received(self._accept())
        self.transport.written = b""
        self.conn.data_received(_frame(9, b"hello"))
        self.assertEqual(_unmask(self.transport.written), (10, b"hello"))
        big = json.dumps({"type": "pong", "pad": "x" * 500}).encode()
        self.conn.data_received(_frame(1, big))
        self.assertEqual(self.worker.malformed, 0)

    def test_server_close_after_subscribe_is_a_lost_connection(self):
        """A close frame from the server during the run is answered and counted by its code."""
        self.conn.data_received(self._accept())
        self.conn.data_received(_frame(1, b'{"type":"subscribed","id":0}'))
        self.transport.written = b""
        self.conn.data_received(_frame(8, struct.pack("!H", 4000)))
        self.assertEqual(self.conn.lost, "closed_4000")
        self.assertEqual(self.worker.lost, 1)
        self.assertEqual(_unmask(self.transport.written), (8, struct.pack("!H", 4000)))
        self.assertTrue(self.transport.closed)

    def test_http_refusal(self):
        """A non-101 answer fails the connection with its status."""
        self.conn.data_received(b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 5\r\n\r\n")
        self.assertEqual(self.conn.opened.exception().reason, "http_503")
        self.assertTrue(self.transport.aborted)

    def test_wrong_accept_key(self):
        """A 101 with the wrong Sec-WebSocket-Accept is refused."""
        self.conn.data_received(b"HTTP/1.1 101 OK\r\nSec-WebSocket-Accept: nope\r\n\r\n")
        self.assertEqual(self.conn.opened.exception().reason, "bad_accept")

    def test_mask_frame_round_trip(self):
        """Client frames are masked and unmask to the payload, for short and 16-bit lengths."""
        for payload in (b"", b"abc", b"y" * 300):
            self.assertEqual(_unmask(mask_frame(1, payload)), (1, payload))


class ReportTests(unittest.TestCase):

    def _report(self, **over) -> dict:
        report: dict[str, Any] = {"connections": {"failed": {}, "lost": {}, "not_attempted": 0},
                  "events": {"delivered": 10, "without_seq": 0, "malformed": 0},
                  "completeness": {"missing": 0, "gaps": 0, "duplicates": 0,
                                   "missing_everywhere": 0}}
        for key, value in over.items():
            report[key].update(value)
        return report

    def test_verdict(self):
        """The run passes only without failures, lost connections, missing, gapped or duplicated events."""
        self.assertEqual(verdict(self._report()), {"passed": True, "reasons": [], "warnings": []})
        bad = verdict(self._report(connections={"failed": {"http_503": 2}},
                                   completeness={"missing": 3, "duplicates": 1}))
        self.assertFalse(bad["passed"])
        self.assertEqual(bad["reasons"], ["connections failed: http_503 2", "3 events missing",
                                          "1 duplicates"])
        self.assertFalse(verdict(self._report(events={"delivered": 0}))["passed"])
        self.assertFalse(verdict(self._report(), interrupted=True)["passed"])
        self.assertTrue(verdict(self._report(events={"without_seq": 5}))["warnings"])

    def test_charts_are_inline_svg(self):
        """Charts are SVG text with escaped labels and no external resources."""
        svg = line_chart("a <b>", [1, 2, 3], [("up", "#000", [1, None, 3])],
                         marks=[(2, "hold")])
        self.assertIn("<svg", svg)
        self.assertIn("a &lt;b&gt;", svg)
        self.assertIn("hold", svg)
        self.assertIn("<rect", histogram_chart("h", [(1.0, 1.26, 3), (1.26, 1.58, 1)]))
        self.assertNotIn("<svg", histogram_chart("h", []))

    def test_metrics_diff(self):
        """Key series are summed over shards (labels kept where they matter) and diffed."""
        text = ('odinws_connections{shard="0"} 3\nodinws_connections{shard="1"} 4\n'
                '# TYPE odinws_connections_closed counter\n'
                'odinws_connections_closed_total{reason="client",code="1000",shard="0"} 2\n'
                'odinws_unrelated 9\n')
        series = key_series(text)
        self.assertEqual(series, {"odinws_connections": 7.0,
                                  'odinws_connections_closed_total{reason="client"}': 2.0})
        diff = diff_series({"odinws_connections": 1.0}, series)
        self.assertEqual(diff["odinws_connections"], {"before": 1.0, "after": 7.0, "delta": 6.0})


class ArgumentTests(unittest.TestCase):

    def _error(self, *argv) -> str:
        try:
            loadtest._arguments(list(argv))
        except SystemExit as e:
            self.assertEqual(e.code, 2)
            return "usage error"
        return "accepted"

    def test_loopback_only_unless_allowed(self):
        """A non-loopback target or source address is refused unless --allow-remote is given."""
        self.assertEqual(self._error("--url", "ws://192.0.2.1:3005/ws"), "usage error")
        self.assertEqual(self._error("--url", "ws://192.0.2.1:3005/ws", "--allow-remote"),
                         "accepted")
        self.assertEqual(self._error("--source-addresses", "192.0.2.7"), "usage error")
        self.assertEqual(self._error("--url", "wss://127.0.0.1/ws"), "usage error")

    def test_bounds(self):
        """Every run is bounded: positive duration and count, both capped."""
        for argv in (["--duration", "0"], ["--duration", "1e9"], ["--connections", "0"],
                     ["--connections", "10000000"], ["--ramp", "fast"], ["--ramp", "0/s"]):
            self.assertEqual(self._error(*argv), "usage error", argv)

    def test_plan(self):
        """Source addresses are added when one address's port range is not enough."""
        args = loadtest._arguments(["--connections", "60000", "--ramp", "1000/s"])
        ports = loadtest._ephemeral_ports() * loadtest.PORTS_PER_ADDRESS_SHARE
        self.assertEqual(len(args.sources), -(-60000 // int(ports)))
        self.assertEqual(args.sources[0], "127.0.0.1")
        self.assertGreaterEqual(args.workers, 1)

    def test_random_tokens(self):
        """--random-tokens gives each connection its own stable set of k token patterns."""
        spec = WorkerSpec(index=0, workers=1, address=("127.0.0.1", 1), host_header="",
                          path="/ws", connections=10, ramp=1.0, start=0.0, hold_end=0.0,
                          close_at=0.0, random_tokens=3, tokens=[f"T{i}" for i in range(20)])
        a = patterns_for(spec, 4)
        self.assertEqual(len(set(a)), 3)
        self.assertEqual(a, patterns_for(spec, 4))
        self.assertTrue(all(p.startswith("odin.token.T") and p.endswith(".*") for p in a))


class RunTests(unittest.TestCase):
    """Real runs: worker processes, real sockets."""

    #: odinws-loadtest's client (L{NativeRunTests}: the native one).
    client = ["--client", "python"]

    def _loadtest(self, *argv) -> tuple[int, dict]:
        report_dir = os.path.abspath(self.mktemp())
        code = loadtest.main([*argv, "--report", report_dir, "--quiet", *self.client])
        with open(os.path.join(report_dir, "report.json")) as f:
            report = json.load(f)
        with open(os.path.join(report_dir, "report.html")) as f:
            self.assertIn("<svg", f.read())
        return code, report

    def test_refused(self):
        """Connections to a port nobody listens on fail as 'refused' and the run fails."""
        code, report = self._loadtest("--url", f"ws://127.0.0.1:{free_port()}/ws", "--connections",
                                 "3", "--ramp", "100/s", "--duration", "0.5", "--drain", "0",
                                 "--workers", "1", "--metrics-url", "none")
        self.assertEqual(code, 1)
        self.assertEqual(report["connections"]["failed"], {"refused": 3})
        self.assertIn("connections failed: refused 3", report["verdict"]["reasons"])

    def test_real_node_loses_nothing(self):
        """
        50 connections from 2 workers on a 2-shard node get every event
        produced while they are subscribed.
        """
        broker = shared_broker()
        topic = f"lt-{uuid.uuid4().hex[:8]}"
        broker.create_topics([topic], partitions=2)
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        node = Node(workdir, broker.bootstrap, shards=2, settings={
            "kafka.topics": {topic: "trade"},
            "kafka.session_timeout_ms": FAST_KAFKA["kafka.session_timeout_ms"],
            "kafka.max_poll_interval_ms": FAST_KAFKA["kafka.max_poll_interval_ms"],
            "kafka.static_membership": FAST_KAFKA.get("kafka.static_membership", True),
            "kafka.consumer_config": {"fetch.wait.max.ms": 10}})
        self.addCleanup(node.stop)
        node.start()

        stop = threading.Event()
        producer = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 0})

        def produce():
            # Three tokens, one seq counter each, about 30 events/s in all.
            seq = {t: 0 for t in ("A", "B", "C")}
            while not stop.wait(0.1):
                for token in seq:
                    seq[token] += 1
                    producer.produce(topic, key=token.encode(),
                                     value=json.dumps({"seq": seq[token]}).encode())
                producer.poll(0)
            producer.flush(10)

        feeder = threading.Thread(target=produce, daemon=True)
        feeder.start()
        self.addCleanup(feeder.join, 15)
        self.addCleanup(stop.set)
        code, report = self._loadtest("--url", node.url(), "--connections", "50", "--ramp", "50/s",
                                 "--duration", "5", "--drain", "2", "--workers", "2")
        self.assertEqual(report["verdict"]["reasons"], [])
        self.assertEqual(code, 0)
        self.assertEqual(report["connections"]["opened"], 50)
        check = report["completeness"]
        self.assertGreater(check["expected"], 50 * 3 * 5)
        self.assertEqual((check["missing"], check["gaps"], check["duplicates"]), (0, 0, 0))
        self.assertEqual(report["server_metrics"]["before_to_hold_end"]
                         ["odinws_connections"]["after"], 50)


class NativeRunTests(RunTests):
    """The same real runs with C{--client native} (built on first use)."""

    client = ["--client", "native"]
