"""
End-to-end test of the graceful stop: SIGTERM to the real C{twistd odinws}
parent with 200 real C{websockets} clients on two shards.
"""

from __future__ import annotations

import collections
import os
import signal
import threading
import time
import uuid

from twisted.trial import unittest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.helpers import FAST_KAFKA
from tests.helpers.broker import shared_broker
from tests.helpers.node import Client, Node, pid_alive, wait_for

CLIENTS = 200
DRAIN_TIMEOUT = 6.0
#: The reason odin_ws.shard.service.Shard.drain sends with 4000.
REASON = "server restarting, reconnect with jitter"


class Watcher(threading.Thread):
    """Blocks in C{recv()} on one client until the server closes it; notes when and how."""

    def __init__(self, client: Client):
        super().__init__(daemon=True)
        self.client = client
        self.closed_at: float | None = None
        self.close: tuple[int | None, str] | None = None

    def run(self) -> None:
        try:
            while True:
                self.client.ws.recv()
        except ConnectionClosed as e:
            self.closed_at = time.monotonic()
            self.close = (e.rcvd.code, e.rcvd.reason) if e.rcvd else (None, "")


class DrainTests(unittest.TestCase):
    """Two shards, 200 clients, C{supervisor.drain_timeout: 6} (a 3 s close window)."""

    def setUp(self):
        broker = shared_broker()
        topic = f"drain-{uuid.uuid4().hex[:8]}"
        broker.create_topics([topic], partitions=2)
        settings = dict(FAST_KAFKA)
        settings.update({
            "kafka.topics": {topic: "trade"},
            "supervisor.drain_timeout": DRAIN_TIMEOUT,
            # 200 connections from one address within a few seconds: the per-IP
            # connection rate is not what this test is about.
            "limits.connection_rate_per_ip": 1000.0,
            "limits.connection_burst_per_ip": 1000,
        })
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        self.node = Node(workdir, broker.bootstrap, shards=2, settings=settings)
        self.addCleanup(self.node.stop)
        self.node.start()

    def test_sigterm_drains_every_client_spread_over_the_window(self):
        """SIGTERM: /health says 503 draining, new clients get 503, all 200 clients get 4000
        with its reason at times spread over the window, and every process exits."""
        clients = []
        for _ in range(CLIENTS):
            c = Client(self.node.url())
            self.addCleanup(c.close)
            clients.append(c)

        def placed():
            return [s["connections"] for s in self.node.health()[1]["shards"]] == [100, 100]
        wait_for(placed, 30, what="100 clients on each shard")
        pids = self.node.shard_pids()
        self.assertEqual(len(pids), 2)
        watchers = [Watcher(c) for c in clients]
        for w in watchers:
            w.start()

        self.node.proc.send_signal(signal.SIGTERM)

        def draining():
            status, body = self.node.health()
            return status == 503 and body["status"] == "draining" and body
        body = wait_for(draining, 10, 0.02, "/health 503 draining")
        self.assertFalse(body["accepting"])
        e = self.assertRaises(InvalidStatus, Client, self.node.url())
        self.assertEqual(e.response.status_code, 503)

        deadline = time.monotonic() + 60
        for w in watchers:
            w.join(max(0.0, deadline - time.monotonic()))
        self.assertEqual(collections.Counter(w.close for w in watchers),
                         {(4000, REASON): CLIENTS})

        # Spread, as a distribution: the closes fill several half-second
        # buckets of the 3 s window and no bucket holds half of them.
        first = min(w.closed_at for w in watchers)
        buckets = collections.Counter(int((w.closed_at - first) / 0.5) for w in watchers)
        self.assertGreaterEqual(len(buckets), 4, buckets)
        self.assertLessEqual(max(buckets.values()), CLIENTS // 2, buckets)

        # twistd re-raises the SIGTERM it handled once stopped: that is a clean stop.
        self.assertIn(self.node.proc.wait(60), (0, -signal.SIGTERM))
        for pid in pids:
            wait_for(lambda pid=pid: not pid_alive(pid), 10, what=f"shard {pid} gone")
