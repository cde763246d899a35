"""
End-to-end test of the systemd notifications (odin_ws.parent.systemd): the
real C{twistd -n odinws} parent started as systemd starts a C{Type=notify}
unit with C{WatchdogSec=}, i.e. with C{NOTIFY_SOCKET} and C{WATCHDOG_USEC}
in its environment, and a Unix datagram socket the test listens on in
systemd's place.
"""

from __future__ import annotations

import os
import signal
import socket
import uuid

from twisted.trial import unittest

from tests.helpers import FAST_KAFKA
from tests.helpers.broker import shared_broker
from tests.helpers.node import Client, Node, wait_for


class SystemdNotifyTests(unittest.TestCase):
    """Two shards, an abstract notify socket, WATCHDOG_USEC 2 s (a ping every second)."""

    def setUp(self):
        broker = shared_broker()
        topic = f"systemd-{uuid.uuid4().hex[:8]}"
        broker.create_topics([topic], partitions=2)
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.addCleanup(self.listener.close)
        # An abstract-namespace name ("@..." in NOTIFY_SOCKET), as systemd
        # uses for some managers; a path under the trial directory would be
        # longer than a Unix socket address may be.
        name = f"odinws-test-notify-{uuid.uuid4().hex}"
        self.listener.bind("\0" + name)
        self.listener.settimeout(0.2)
        self.messages: list[dict[str, str]] = []
        settings = dict(FAST_KAFKA)
        settings["kafka.topics"] = {topic: "trade"}
        # READY=1 must come from both shards registering, not from the grace
        # running out on a busy machine.
        settings["listen.startup_grace"] = 120.0
        self.node = Node(workdir, broker.bootstrap, shards=2, settings=settings,
                         env={"NOTIFY_SOCKET": "@" + name,
                              "WATCHDOG_USEC": "2000000"})
        self.addCleanup(self.node.stop)
        self.node.start(wait_ready=False)

    def receive(self) -> list[dict[str, str]]:
        """Every notification so far, each parsed into its fields."""
        try:
            data = self.listener.recv(4096)
        except TimeoutError:
            return self.messages
        self.messages.append(dict(line.split("=", 1) for line in data.decode().split("\n")))
        return self.messages

    def first(self, field: str, what: str, timeout: float = 60.0) -> dict[str, str]:
        """The first notification with C{field}, waiting for it."""
        def seen():
            if self.node.proc.poll() is not None:
                raise AssertionError(f"odinws exited: {self.node.tail()}")
            return next((m for m in self.receive() if field in m), None)
        return wait_for(seen, timeout, 0, what)

    def test_ready_status_watchdog_stopping(self):
        """
        The parent says READY=1 once both shards are alive (its STATUS says
        so, and /health answers 200), keeps pinging WATCHDOG=1 from its
        reactor, updates STATUS= when a client connects, and says
        STOPPING=1 on SIGTERM before it exits cleanly. Its shards carry none
        of systemd's variables.
        """
        ready = self.first("READY", "READY=1")
        self.assertEqual(ready["READY"], "1")
        self.assertEqual(ready["STATUS"], "ready: 2/2 shards alive, 0 connections")
        self.assertEqual(self.node.health()[0], 200)
        for pid in self.node.shard_pids():
            with open(f"/proc/{pid}/environ", "rb") as f:
                names = {item.split(b"=", 1)[0] for item in f.read().split(b"\0")}
            self.assertFalse(names & {b"NOTIFY_SOCKET", b"WATCHDOG_USEC"}, pid)

        def pings() -> int:
            self.receive()
            return sum(1 for m in self.messages if m.get("WATCHDOG") == "1") >= 3
        wait_for(pings, 30, 0, "three WATCHDOG=1 pings")

        client = Client(self.node.url())
        self.addCleanup(client.close)
        wait_for(lambda: any(m.get("STATUS") == "ready: 2/2 shards alive, 1 connections"
                             for m in self.receive()), 30, 0, "STATUS with 1 connection")
        client.close()

        self.node.proc.terminate()
        stopping = self.first("STOPPING", "STOPPING=1", 30)
        self.assertTrue(stopping["STATUS"].startswith("stopping: "), stopping)
        # twistd re-raises the SIGTERM it handled once stopped: a clean stop
        # (systemd counts it as one too).
        self.assertIn(self.node.proc.wait(30), (0, -signal.SIGTERM))
