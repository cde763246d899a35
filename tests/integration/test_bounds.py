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

from prometheus_client.parser import text_string_to_metric_families
from websockets.exceptions import ConnectionClosed

from tests.helpers import FAST_KAFKA, client_frame, parse_frames
from tests.helpers.certs import TestCA
from tests.helpers.node import AdminNode, Client, Node, http_get, wait_for
from tests.helpers.topics import TopicNodeCase, stream

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


def history_visits(node: Node, by: str) -> float:
    """C{odinws_history_visits_total{by}} of the node, all shards together."""
    status, _, body = http_get(node.port, "/metrics")
    assert status == 200, status
    return sum(s.value for f in text_string_to_metric_families(body.decode()) for s in f.samples
               if s.name == "odinws_history_visits_total" and s.labels.get("by") == by)


class RecoveryWorkTests(TopicNodeCase):
    """Recoveries and snapshots of channels that match nothing on one shard (H1-H3 of issue 23)."""

    shards = 1
    partitions = 2

    def test_non_matching_recoveries_look_at_no_event(self):
        """
        With 3,000 events retained, subscribes to 100 channels that match
        nothing, recovering from the first retained event of both
        partitions, by WebSocket and by event stream, are each answered
        (nothing to replay) having looked at no retained event (the scan
        looked at 2,998 each); snapshots of 100 wildcards that match
        nothing look at no cache entry; a recovery of
        one token looks at the events it replays and at most its channel's
        run per partition, no more; a probe on the same shard receives
        every event.
        """
        node = self.node()
        probe = self.connect(node)
        probe.subscribe("odin.token.*.*")
        self.produce(3000)
        probe.collect(3000, timeout=60)
        self.wait_consumed(node)
        attacker = self.connect(node)
        positions = attacker.request({"type": "subscribe", "channels": ["odin.token.X.trade"],
                                      "since": []})["positions"]
        attacker.request({"type": "unsubscribe", "channels": ["odin.token.X.trade"]})
        deep = [f"{stream(p)}:0" for p in positions]   # all but each partition's first
        nothing = [f"odin.token.NONE{i}.trade" for i in range(100)]
        # Nothing recovered or snapshot yet (since: [] looks at nothing).
        self.assertEqual((history_visits(node, "recovery"), history_visits(node, "snapshot")),
                         (0, 0))
        for i in range(5):
            ack = attacker.request({"type": "subscribe", "channels": nothing, "since": deep,
                                    "id": i})
            self.assertEqual((ack["type"], ack.get("recovered"), ack.get("replayed")),
                             ("subscribed", True, 0), ack)
        # The same through event streams (H2), the positions in Last-Event-ID.
        topic, _, epoch, _ = positions[0].split(":")
        vector = f"{topic}~{epoch}~0:0,1:0"
        for _ in range(3):
            with socket.create_connection(("127.0.0.1", node.port), timeout=10) as sock:
                sock.sendall(f"GET /sse?channels={','.join(nothing)} HTTP/1.1\r\n"
                             f"Host: 127.0.0.1\r\nAccept: text/event-stream\r\n"
                             f"Last-Event-ID: {vector}\r\n\r\n".encode())
                data = b""
                while b"\n\n" not in data.partition(b"event: subscribed")[2]:
                    chunk = sock.recv(65536)
                    self.assertTrue(chunk, data)
                    data += chunk
                self.assertIn(b'"recovered":true', data)
        # Snapshots of 100 token wildcards that match nothing (H3).
        snapper = self.connect(node)
        for i in range(5):
            ack = snapper.request({"type": "subscribe", "snapshot": True, "id": i,
                                   "channels": [f"odin.token.NONE{j}.*" for j in range(100)]})
            self.assertEqual((ack["type"], ack["snapshot"]), ("subscribed", 0), ack)
        # Then work of a known size: one exact snapshot (one cache entry),
        # and one token's recovery. /metrics is gathered at most once a
        # second: once it shows that work, it shows everything before it.
        self.produce(10)
        # Every event consumed (and relayed) before the work is asked: a
        # recovery asked while the last ten were in flight replayed 1,000.
        got = [e["data"]["seq"] for e in probe.collect(3010)]
        last = self.connect(node)
        ack = last.request({"type": "subscribe", "channels": ["odin.token.T0.trade"],
                            "snapshot": True})
        self.assertEqual(ack["snapshot"], 1)
        ack = last.request({"type": "subscribe", "channels": ["odin.token.T1.*"],
                            "since": deep, "id": "t1"})
        # Partition 1 holds T1's events only (token i on partition i % 2).
        self.assertEqual((ack["recovered"], ack["replayed"]), (True, 1002))
        visits = wait_for(lambda: history_visits(node, "recovery"), 10, 0.2, "the visits")
        self.assertTrue(1002 <= visits <= 1002 + 2, visits)
        self.assertEqual(history_visits(node, "snapshot"), 1)
        self.assertEqual(sorted(got), list(range(3010)))


class SubscriptionShareTests(TopicNodeCase):
    """A few addresses cannot take a shard's subscription budget (M2 of issue 23)."""

    shards = 1
    partitions = 1

    def client_from(self, node: Node, address: str) -> Client:
        """A WebSocket client whose connection comes from C{address} (a 127/8 address)."""
        sock = socket.create_connection(("127.0.0.1", node.port), timeout=10,
                                        source_address=(address, 0))
        client = Client(node.url(), sock=sock)
        self.addCleanup(client.close)
        return client

    def test_four_addresses_cannot_refuse_a_fifth(self):
        """
        With a budget of 100 subscriptions and limits.ip_subscription_share
        0.2, four addresses each holding all they may (two connections of
        10) get server_subscription_limit on a third connection, and a
        fifth address's subscribe is accepted and receives its events.
        """
        node = self.node(**{"limits.max_shard_subscriptions": 100,
                            "limits.ip_subscription_share": 0.2,
                            "limits.max_subscriptions": 10})
        for n in range(2, 6):
            for c in range(2):
                client = self.client_from(node, f"127.0.0.{n}")
                client.subscribe(*(f"odin.token.A{n}x{c}x{i}.trade" for i in range(10)))
            third = self.client_from(node, f"127.0.0.{n}")
            reply = third.request({"type": "subscribe", "channels": ["odin.token.T0.trade"],
                                   "id": n})
            self.assertEqual((reply["type"], reply["code"], reply["id"]),
                             ("error", "server_subscription_limit", n))
        fifth = self.client_from(node, "127.0.0.6")
        fifth.subscribe("odin.token.T0.trade")
        self.produce(3)
        self.assertEqual([e["data"]["seq"] for e in fifth.collect(1)], [0])
