"""
Keepalive pings of a real node (its shard's ping wheel,
odin_ws/shard/delivery/pingwheel.py): a client that answers them (the
C{websockets} library, which does so on its own) stays; one that opened
the connection on a raw socket and never answers is dropped and counted.
"""

from __future__ import annotations

import socket

from tests.helpers.node import Client, node_metric, wait_for
from tests.helpers.rawclients import upgrade
from tests.helpers.topics import TopicNodeCase

INTERVAL, TIMEOUT = 0.5, 1.0


class KeepaliveTests(TopicNodeCase):
    shards = 1
    partitions = 1
    prefix = "keepalive"

    def silent(self, port: int) -> socket.socket:
        """A raw WebSocket connection (upgraded, 101 read) that never writes again."""
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.addCleanup(sock.close)
        sock.sendall(upgrade("/ws"))
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(4096)
            self.assertTrue(chunk, "the node closed before answering the upgrade")
            head += chunk
        self.assertTrue(head.startswith(b"HTTP/1.1 101"), head[:40])
        return sock

    def test_silent_dropped_answering_kept(self):
        """
        The node pings every connection; the one that never answers is
        dropped once interval + timeout have passed (its socket sees the
        node's pings, then the end), counted in odinws_ping_timeouts_total;
        the C{websockets} client, pinged as often, answered and is still
        served afterwards.
        """
        node = self.node(**{"keepalive.ping_interval": INTERVAL,
                            "keepalive.ping_timeout": TIMEOUT})
        answering = Client(node.url(), ping_interval=None)
        self.addCleanup(answering.ws.close)
        sock = self.silent(node.port)
        sock.settimeout(0.2)
        received = bytearray()

        def ended() -> bool:
            try:
                chunk = sock.recv(4096)
            except TimeoutError:
                return False
            except ConnectionResetError:
                return True
            received.extend(chunk)
            return not chunk

        wait_for(ended, 20.0, 0, "the node to drop the silent connection")
        self.assertEqual(received[:1], b"\x89")   # it was pinged: a ping frame, FIN set
        wait_for(lambda: node_metric(node, "odinws_ping_timeouts_total") == 1, 10.0,
                 what="the ping timeout to be counted")
        self.assertEqual(answering.subscribe("odin.token.*.*")["type"], "subscribed")
        self.assertEqual(node_metric(node, "odinws_ping_timeouts_total"), 1)
