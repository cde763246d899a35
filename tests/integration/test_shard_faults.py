"""
Process faults around the parent and its shards, with the real broker, the
real C{twistd odinws} parent, real shard processes and real C{websockets}
clients: the parent killed, a shard stopped (SIGSTOP), and what a shard's
environment shows to anyone who can read it.
"""

from __future__ import annotations

import os
import signal
import threading
import uuid

from twisted.trial import unittest
from websockets.exceptions import ConnectionClosed

from tests.helpers import FAST_KAFKA
from tests.helpers.broker import shared_broker
from tests.helpers.node import Client, Node, pid_alive, wait_for


class FaultTestCase(unittest.TestCase):
    """A node on a fresh topic; C{shards} shards, C{extra} settings."""

    shards = 1
    extra: dict = {}

    def setUp(self):
        broker = shared_broker()
        topic = f"faults-{uuid.uuid4().hex[:8]}"
        broker.create_topics([topic], partitions=self.shards)
        settings = dict(FAST_KAFKA)
        settings["kafka.topics"] = {topic: "trade"}
        settings.update(self.extra)
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        self.node = Node(workdir, broker.bootstrap, shards=self.shards, settings=settings)
        self.addCleanup(self.node.stop)
        self.node.start()
        self.pids = self.node.shard_pids()
        # Registered after node.stop, so it runs first: no shard of ours outlives the test.
        self.addCleanup(self._reap)

    def _reap(self) -> None:
        for pid in self.pids:
            if pid_alive(pid):
                os.kill(pid, signal.SIGCONT)

    def client(self) -> Client:
        c = Client(self.node.url())
        self.addCleanup(c.close)
        return c


class ParentDeathTests(FaultTestCase):
    def test_parentKilledClientsGet4000(self):
        """
        When the parent is killed with SIGKILL, its shards close every client
        with the documented 4000 ("server restarting"), not a bare drop
        (1006), and then exit.
        """
        clients = [self.client() for _ in range(3)]
        for c in clients:
            c.subscribe("odin.token.T.trade")
        closes: list = []

        def watch(c: Client) -> None:
            try:
                while True:
                    c.ws.recv()
            except ConnectionClosed as e:
                closes.append(e.rcvd.code if e.rcvd else 1006)

        for c in clients:
            threading.Thread(target=watch, args=(c,), daemon=True).start()
        self.node.proc.send_signal(signal.SIGKILL)
        self.node.proc.wait(10)
        wait_for(lambda: len(closes) == len(clients), 10, what="every client closed")
        self.assertEqual(closes, [4000] * len(clients))
        wait_for(lambda: not any(pid_alive(p) for p in self.pids), 10, what="the shards exited")
