"""
End-to-end tests of the bounds on the work one client may cause (issue 23,
docs/security.md "Bounded work per client"): a real node and its shard
process, the real broker, an attacker speaking raw sockets or the
C{websockets} library, and a probe client on the same shard that must keep
receiving every event while the attack goes on.
"""

from __future__ import annotations

import os
import socket
import ssl
import time

from websockets.exceptions import ConnectionClosed

from tests.helpers import FAST_KAFKA, client_frame, parse_frames
from tests.helpers.certs import TestCA
from tests.helpers.node import AdminNode, Node, wait_for
from tests.helpers.topics import TopicNodeCase

UPGRADE = (b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
           b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
           b"Sec-WebSocket-Version: 13\r\n\r\n")


def raw_upgrade(node: Node) -> tuple[socket.socket, bytes]:
    """A raw socket past the 101 of C{node}; the bytes that came after the head."""
    sock = socket.create_connection(("127.0.0.1", node.port), timeout=10)
    sock.sendall(UPGRADE)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"closed before the 101: {data!r}")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock, rest


def frames_until_close(sock: socket.socket, data: bytes,
                       timeout: float = 20.0) -> list[tuple[int, bytes]]:
    """The server's frames up to and including its close frame."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            frames = parse_frames(data)
        except (ValueError, IndexError):   # a frame not complete yet
            frames = []
        if frames and frames[-1][0] == 8:
            return frames
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"closed without a close frame: {parse_frames(data)[-3:]}")
        data += chunk
    raise AssertionError("no close frame in time")


def close_code(payload: bytes) -> int:
    return int.from_bytes(payload[:2], "big")


class ControlFrameFloodTests(TopicNodeCase):
    """Ping and pong floods on a one-shard node (H4 of issue 23)."""

    shards = 1
    partitions = 1

    def test_ping_floods_closed_1008_probe_keeps_every_event(self):
        """
        10,000 empty pings from a raw socket in one write, then empty pongs,
        then pings from the C{websockets} library: each flooder is closed
        with 1008 (control frames count in limits.message_rate), and a probe
        client on the same shard receives every event produced meanwhile,
        in order.
        """
        node = self.node()
        probe = self.connect(node)
        probe.subscribe("odin.token.*.*")
        self.produce(5)
        probe.collect(5)
        for opcode in (9, 10):
            sock, rest = raw_upgrade(node)
            self.addCleanup(sock.close)
            sock.sendall(client_frame(opcode, b"") * 10000)
            frames = frames_until_close(sock, rest)
            self.assertEqual(close_code(frames[-1][1]), 1008, frames[-3:])
            self.produce(5)
        flooder = self.connect(node)

        def pinged_out():
            try:
                for _ in range(100):
                    flooder.ws.ping()
            except ConnectionClosed as e:
                return e.rcvd.code if e.rcvd else -1
            return None
        self.assertEqual(wait_for(pinged_out, 20, 0, "the ping flooder closed"), 1008)
        self.produce(5)
        got = [e["data"]["seq"] for e in probe.collect(20)]
        self.assertEqual(got, list(range(20)))


class TLSRefusalTests(TopicNodeCase):
    """
    A node whose public port speaks TLS: only the shard reads heads there
    (L1 and M3 of issue 23). A long handshake timeout, so that a refused
    connection left open shows.
    """

    shards = 1
    partitions = 1

    def setUp(self):
        super().setUp()
        self.ca = TestCA("odinws bounds CA")
        _, cert, key = self.ca.issue()
        self.cert_path = os.path.join(self.workdir, "server.crt")
        with open(self.cert_path, "wb") as f:
            f.write(cert + key)
        settings = dict(FAST_KAFKA)
        settings.update({"kafka.topics": {self.topic: "trade"},
                         "tls.certificate": self.cert_path, "limits.handshake_timeout": 60.0})
        self.tls_node = AdminNode(self.workdir, self.broker.bootstrap, shards=1, settings=settings)
        self.addCleanup(self.tls_node.stop)
        self.tls_node.start()

    def tls_socket(self) -> ssl.SSLSocket:
        ctx = ssl.create_default_context(cadata=self.ca.pem.decode())
        raw = socket.create_connection(("127.0.0.1", self.tls_node.port), timeout=10)
        sock = ctx.wrap_socket(raw, server_hostname="localhost")
        self.addCleanup(sock.close)
        return sock

    def answer(self, request: bytes) -> bytes:
        """What the node answers C{request} over TLS, up to its close."""
        sock = self.tls_socket()
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
        return data

    def test_no_status_page_on_the_tls_port(self):
        """
        Requests that are not an upgrade get what docs/protocol.md says
        (404 off the WebSocket path, 426 on it without Upgrade, 405 for
        other methods), never Autobahn's 200 status page naming its
        version, nor its C{?redirect=} 303.
        """
        cases = {b"GET / HTTP/1.1\r\nHost: x\r\n\r\n": 404,
                 b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n": 404,
                 b"GET /?redirect=https%3A%2F%2Fexample.com HTTP/1.1\r\nHost: x\r\n\r\n": 404,
                 b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n": 426,
                 b"GET /ws?redirect=https%3A%2F%2Fexample.com HTTP/1.1\r\nHost: x\r\n\r\n": 426,
                 b"POST /ws HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n": 405}
        for request, status in cases.items():
            data = self.answer(request)
            self.assertTrue(data.startswith(b"HTTP/1.1 %d " % status), (request, data[:200]))
            self.assertNotIn(b"autobahn", data.lower())

    def test_refused_tls_connection_is_closed_at_once(self):
        """
        A TLS client whose head is refused (431) and that keeps sending
        without a TLS close_notify is closed by the shard, long before the
        handshake timeout (60 s here): it sends at most 64 MiB, bounded,
        and the server's close ends it (before: read until the timeout).
        """
        sock = self.tls_socket()
        chunk = b"b" * 65536
        sent = 0
        # Reset, broken pipe or TLS EOF once closed; the close may already
        # come during the head (the shard refuses it past listen.max_head_bytes).
        with self.assertRaises(OSError):
            sock.sendall(b"GET /ws HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 70000)
            while sent < 64 << 20:
                sock.sendall(chunk)
                sent += len(chunk)
        self.assertLess(sent, 64 << 20)
