"""
Tests for L{odin_ws.shard.clients.headgate}: a shard reads what a client sends
before its WebSocket opens with the parent's parser and limit, on the
parent's replay and inside TLS, before Autobahn sees a byte (issue 16).
The gate alone over a StringTransport, then real C{ClientProtocol}s of a
Shard (tests/helpers ShardTestCase), then TLS over an in-memory pump.
"""

from __future__ import annotations

import twisted.test
from twisted.internet import ssl
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransport
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.filepath import FilePath
from twisted.test import iosim
from twisted.trial import unittest

from odin_ws.shard.clients.headgate import HeadGate
from tests.helpers import ShardClient, ShardTestCase, client_frame, parse_frames, sample

UPGRADE = (b"GET /ws HTTP/1.1\r\nHost: node\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")


def status_of(data: bytes) -> int | None:
    """The status of the HTTP answer at the start of C{data}, if any."""
    if not data.startswith(b"HTTP/1.1 "):
        return None
    return int(data.split(b" ", 2)[1])


class GateTests(unittest.TestCase):
    """The gate alone: what it passes on, what it answers, what it counts."""

    def setUp(self):
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", "10.9.0.1", 1))
        self.gate = HeadGate(self.transport, 512)

    def test_passes_nothing_until_the_head_ends(self):
        """Until the head is complete the gate passes nothing and writes nothing."""
        for i in range(len(UPGRADE) - 1):
            self.assertEqual(self.gate.admit(UPGRADE[i:i + 1]), b"")
        self.assertEqual(self.transport.value(), b"")
        self.assertEqual(self.gate.admit(UPGRADE[-1:]), UPGRADE)

    def test_passes_head_and_what_followed_in_the_read(self):
        """An accepted head goes on with the bytes after it in the same read, unchanged."""
        self.assertEqual(self.gate.admit(UPGRADE + b"\x81\x80abcd"), UPGRADE + b"\x81\x80abcd")
        self.assertFalse(self.transport.disconnecting)

    def test_refusal_answered_counted_closed(self):
        """
        A head the parser refuses is answered with its status, closed and
        counted under the dispatcher's label; later bytes are dropped
        without another answer.
        """
        before = sample("odinws_rejected_connections_total", status="400", reason="bad_request")
        self.assertEqual(self.gate.admit(UPGRADE[:-2] + b"\n"), b"")
        answer = self.transport.value()
        self.assertEqual(status_of(answer), 400)
        self.assertIn(b"\r\nConnection: close\r\n", answer)
        self.assertTrue(answer.endswith(b"\r\n\r\nline not ended by CRLF\n"))
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(sample("odinws_rejected_connections_total", status="400",
                                reason="bad_request"), before + 1)
        self.assertEqual(self.gate.admit(UPGRADE), b"")
        self.assertEqual(self.transport.value(), answer)

    def test_too_large(self):
        """More than the limit without an end of head is 431, counted as head_too_large."""
        before = sample("odinws_rejected_connections_total", status="431", reason="head_too_large")
        self.assertEqual(self.gate.admit(UPGRADE[:-2] + b"X-Pad: " + b"a" * 600), b"")
        self.assertEqual(status_of(self.transport.value()), 431)
        self.assertEqual(sample("odinws_rejected_connections_total", status="431",
                                reason="head_too_large"), before + 1)

    def test_later_read_before_open_dropped(self):
        """
        Bytes of a later read while the handshake is still pending (the
        caller still asks the gate) are not passed: the connection is closed
        without an answer (Autobahn may still answer) and counted as early_data.
        """
        before = sample("odinws_rejected_connections_total", status="400", reason="early_data")
        self.assertEqual(self.gate.admit(UPGRADE), UPGRADE)
        self.assertEqual(self.gate.admit(b"\x81\x80abcd" * 1000), b"")
        self.assertEqual(self.transport.value(), b"")
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(sample("odinws_rejected_connections_total", status="400",
                                reason="early_data"), before + 1)
        self.assertEqual(self.gate.admit(b"more"), b"")
        self.assertEqual(sample("odinws_rejected_connections_total", status="400",
                                reason="early_data"), before + 1)


class ShardHeadTests(ShardTestCase):
    """A shard's ClientProtocol behind the gate, bytes as the parent replays them."""

    def raw(self, data: bytes, ip: str = "10.9.1.1") -> ShardClient:
        client = ShardClient(self.shard, ip)
        client.send(data)
        return client

    def test_crlf_lf_and_64k_closed_in_one_read(self):
        """
        The issue's case: a head ending in CRLF LF followed by 64 KiB, in
        one read, gets 400 and the close in that read; Autobahn holds none
        of it, and more bytes are not buffered either.
        """
        client = self.raw(UPGRADE[:-2] + b"\n" + b"A" * 65536)
        self.assertEqual(status_of(client.transport.value()), 400)
        self.assertTrue(client.lost)
        self.assertEqual(client.proto.data, b"")
        client.proto.dataReceived(b"B" * 65536)
        self.assertEqual(client.proto.data, b"")

    def test_oversized_head_431(self):
        """A head longer than listen.max_head_bytes gets 431 on the read that crosses it."""
        limit = self.config["listen.max_head_bytes"]
        client = ShardClient(self.shard, "10.9.1.2")
        client.send(UPGRADE[:-2])
        self.assertIsNone(status_of(client.transport.value()))
        client.send(b"X-Pad: " + b"a" * limit)
        self.assertEqual(status_of(client.transport.value()), 431)
        self.assertTrue(client.lost)
        self.assertEqual(client.proto.data, b"")

    def test_head_at_limit_accepted(self):
        """A head of exactly listen.max_head_bytes is served (the limit is not off by one)."""
        limit = self.config["listen.max_head_bytes"]
        pad = b"X-Pad: \r\n"
        head = UPGRADE[:-2] + pad + b"\r\n"
        head = head.replace(b"X-Pad: ", b"X-Pad: " + b"a" * (limit - len(head)))
        self.assertEqual(len(head), limit)
        self.assertEqual(status_of(self.raw(head).transport.value()), 101)

    def test_trickled_head_served(self):
        """A head sent one byte per read reaches Autobahn whole and is answered 101."""
        client = ShardClient(self.shard, "10.9.1.3")
        for i in range(len(UPGRADE)):
            client.send(UPGRADE[i:i + 1])
        self.assertEqual(status_of(client.transport.value()), 101)
        self.assertTrue(client.open)

    def test_early_frame_held_until_open(self):
        """
        A frame sent right behind the head (same read, as the parent hands
        it over) is read once the WebSocket is open: the ping is answered.
        """
        client = self.raw(UPGRADE + client_frame(1, b'{"type":"ping","id":7}'))
        head, _, frames = client.transport.value().partition(b"\r\n\r\n")
        self.assertEqual(status_of(head), 101)
        self.assertEqual(parse_frames(frames), [(1, b'{"type":"pong","id":7}')])

    def test_early_bytes_count_against_the_limit(self):
        """Bytes behind the head in the same read count with it: past the limit, 431."""
        limit = self.config["listen.max_head_bytes"]
        client = self.raw(UPGRADE + b"\x00" * (limit - len(UPGRADE) + 1))
        self.assertEqual(status_of(client.transport.value()), 431)

    def test_gate_gone_once_open(self):
        """An open connection keeps no gate (no per-connection cost after the handshake)."""
        client = self.connect("10.9.1.4")
        self.assertIsNone(client.proto.head_gate)

    def test_smuggled_header_refused(self):
        """A 0x85 in a value (a line break to Autobahn) is 400, never a second header."""
        client = self.raw(UPGRADE[:-2] + b"X-Forwarded-For: 1.2.3.4\x85Origin: https://e.com\r\n\r\n")
        self.assertEqual(status_of(client.transport.value()), 400)


class Recorder(Protocol):
    """A TLS client's plaintext side: what it got and whether it was closed."""

    def __init__(self):
        self.data = b""
        self.lost = False

    def dataReceived(self, data):
        self.data += data

    def connectionLost(self, reason):
        self.lost = True


class TLSHeadTests(ShardTestCase):
    """The gate on the shard's TLS path (the parent reads nothing there)."""

    def tls_client(self) -> tuple[Recorder, iosim.IOPump]:
        pem = FilePath(twisted.test.__file__).sibling("server.pem").getContent()
        # What odin_ws.shard.clients.tls.wrap builds, with the test's clock: TLS
        # transports hold small writes until the clock's next turn.
        server = TLSMemoryBIOFactory(ssl.PrivateCertificate.loadPEM(pem).options(), False,
                                     self.shard.factory, clock=self.clock).buildProtocol(None)
        recorder = Recorder()
        client = TLSMemoryBIOFactory(ssl.CertificateOptions(), True,
                                     Factory.forProtocol(lambda: recorder),
                                     clock=self.clock).buildProtocol(None)
        pump = iosim.connect(
            server, iosim.FakeTransport(server, True, peerAddress=IPv4Address("TCP", "10.9.2.1", 1)),
            client, iosim.FakeTransport(client, False), clock=self.clock)
        return recorder, pump

    def test_oversized_head_closed(self):
        """
        A TLS client sending a 70 KB head without end gets 431 inside TLS and
        is closed; the shard buffers at most the limit (Autobahn nothing).
        """
        recorder, pump = self.tls_client()
        [proto] = self.shard.connections
        recorder.transport.write(b"GET /ws HTTP/1.1\r\nHost: node\r\nX-Pad: " + b"a" * 70000)
        pump.flush()
        self.assertEqual(status_of(recorder.data), 431)
        self.assertTrue(recorder.lost)
        self.assertEqual(proto.data, b"")
        self.assertEqual(set(self.shard.connections), set())

    def test_upgrade_served(self):
        """A well-formed upgrade through TLS still passes the gate and opens."""
        recorder, pump = self.tls_client()
        recorder.transport.write(UPGRADE)
        pump.flush()
        self.assertEqual(status_of(recorder.data), 101)
        self.assertFalse(recorder.lost)
