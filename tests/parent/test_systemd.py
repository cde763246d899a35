"""
Tests for L{odin_ws.parent.systemd}: the parent's notifications to systemd
(READY=1, STATUS=, WATCHDOG=1, STOPPING=1), received on a real Unix datagram
socket the test listens on (as systemd's would be), with the timers driven
by a fake clock, and the node as C{makeService} assembles it.
"""

from __future__ import annotations

import os
import signal
import socket
import tempfile

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from odin_ws import tap
from odin_ws.common import config as configmod
from odin_ws.common.commands import Register, Stats
from odin_ws.common.settings import Settings
from odin_ws.parent import systemd
from tests.helpers import FakeOptions, FakeReactor, connect_shard


class NotifyListener:
    """A bound Unix datagram socket standing for systemd's notification socket."""

    def __init__(self, case: SynchronousTestCase, abstract: bool = False):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        case.addCleanup(self.sock.close)
        if abstract:
            name = f"odinws-test-notify-{os.getpid()}-{id(self)}"
            self.sock.bind("\0" + name)
            self.address = "@" + name
        else:
            directory = tempfile.mkdtemp()
            self.address = os.path.join(directory, "notify")
            self.sock.bind(self.address)
            case.addCleanup(os.rmdir, directory)
            case.addCleanup(os.unlink, self.address)

    def messages(self) -> list[dict[str, str]]:
        """Every datagram received since the last call, parsed into its fields."""
        out: list[dict[str, str]] = []
        while True:
            try:
                data = self.sock.recv(4096)
            except BlockingIOError:
                return out
            out.append(dict(line.split("=", 1) for line in data.decode().split("\n")))


class FakeHandle:
    def __init__(self, alive: bool = False, connections: int = 0):
        self.alive = alive
        self.connections = connections


class NotifySocketTests(SynchronousTestCase):
    """L{systemd.NotifySocket}: the datagram protocol itself."""

    def test_path(self):
        """Fields reach a socket named by a path as one datagram, one field per line."""
        listener = NotifyListener(self)
        notify = systemd.NotifySocket.from_environ({"NOTIFY_SOCKET": listener.address})
        self.addCleanup(notify.close)
        self.assertTrue(notify.send("READY=1", "STATUS=hello"))
        self.assertEqual(listener.messages(), [{"READY": "1", "STATUS": "hello"}])

    def test_abstract(self):
        """An address beginning with @ is Linux's abstract namespace (a leading NUL)."""
        listener = NotifyListener(self, abstract=True)
        notify = systemd.NotifySocket.from_environ({"NOTIFY_SOCKET": listener.address})
        self.addCleanup(notify.close)
        notify.send("WATCHDOG=1")
        self.assertEqual(listener.messages(), [{"WATCHDOG": "1"}])

    def test_none_without_socket(self):
        """Without NOTIFY_SOCKET (or with an address that is no Unix socket) there is no notifier."""
        self.assertIsNone(systemd.NotifySocket.from_environ({}))
        self.assertIsNone(systemd.NotifySocket.from_environ({"NOTIFY_SOCKET": ""}))
        self.assertIsNone(systemd.NotifySocket.from_environ({"NOTIFY_SOCKET": "vsock:2:9"}))

    def test_gone_socket_never_raises(self):
        """
        A socket nobody listens on makes send() return False, not raise,
        and sending works again once a socket is bound there again.
        """
        directory = tempfile.mkdtemp()
        self.addCleanup(os.rmdir, directory)
        address = os.path.join(directory, "notify")
        notify = systemd.NotifySocket(address)
        self.addCleanup(notify.close)
        self.assertFalse(notify.send("READY=1"))
        self.assertFalse(notify.send("READY=1"))
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.addCleanup(listener.close)
        listener.bind(address)
        self.addCleanup(os.unlink, address)
        self.assertTrue(notify.send("READY=1"))
        self.assertEqual(listener.recv(100), b"READY=1")


class WatchdogIntervalTests(SynchronousTestCase):
    """L{systemd.watchdog_interval}."""

    def test_half_of_watchdog_usec(self):
        """Pings come at half of WATCHDOG_USEC, as sd_watchdog_enabled(3) advises."""
        self.assertEqual(systemd.watchdog_interval({"WATCHDOG_USEC": "30000000"}, 7), 15.0)
        self.assertEqual(systemd.watchdog_interval(
            {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "7"}, 7), 15.0)

    def test_off(self):
        """
        No watchdog when WATCHDOG_USEC is missing, zero or not a number, or
        WATCHDOG_PID is another process.
        """
        for env in ({}, {"WATCHDOG_USEC": "0"}, {"WATCHDOG_USEC": "x"},
                    {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "8"}):
            self.assertIsNone(systemd.watchdog_interval(env, 7), env)


class SystemdNotifierTests(SynchronousTestCase):
    """L{systemd.SystemdNotifier} on a fake clock, two shards."""

    def setUp(self):
        self.clock = Clock()
        self.listener = NotifyListener(self)
        self.starting = True
        self.handles = [FakeHandle(), FakeHandle()]
        self.notifier = systemd.SystemdNotifier.from_environ(
            self.clock, {"NOTIFY_SOCKET": self.listener.address, "WATCHDOG_USEC": "10000000"},
            1234, starting=lambda: self.starting, shards=lambda: self.handles)
        self.notifier.start()
        self.addCleanup(self.notifier.stop)

    def test_ready_when_no_longer_starting(self):
        """
        No READY=1 while the node is starting; exactly one once it is not,
        within a status interval, with a status naming the shards and
        connections.
        """
        first = self.listener.messages()
        self.assertNotIn("READY", {k for m in first for k in m})
        self.assertIn({"STATUS": "starting: 0/2 shards alive, 0 connections"}, first)
        self.handles[0].alive = self.handles[1].alive = True
        self.starting = False
        self.clock.advance(systemd.STATUS_INTERVAL)
        self.assertEqual(self.listener.messages(),
                         [{"READY": "1", "STATUS": "ready: 2/2 shards alive, 0 connections"}])
        self.clock.advance(systemd.STATUS_INTERVAL)
        self.assertEqual(self.listener.messages(), [])
        self.assertEqual(self.notifier.state, "ready")

    def test_status_follows_changes(self):
        """STATUS= is sent again when shards or connections change, and only then."""
        self.listener.messages()
        self.handles[0].alive, self.handles[0].connections = True, 40
        self.handles[1].alive, self.handles[1].connections = False, 9
        self.clock.advance(systemd.STATUS_INTERVAL)
        self.assertEqual(self.listener.messages(),
                         [{"STATUS": "starting: 1/2 shards alive, 40 connections"}])
        self.clock.advance(systemd.STATUS_INTERVAL)
        self.assertEqual(self.listener.messages(), [])

    def test_watchdog_pings_from_the_reactor(self):
        """WATCHDOG=1 goes out at start and then every half of WATCHDOG_USEC, from the clock's timers."""
        self.assertIn({"WATCHDOG": "1"}, self.listener.messages())
        pings = 0
        for _ in range(20):
            self.clock.advance(1)
            pings += self.listener.messages().count({"WATCHDOG": "1"})
        self.assertEqual(pings, 4)

    def test_stopping(self):
        """stopping() sends STOPPING=1 with a status; stop() ends the pings."""
        self.listener.messages()
        self.handles[0].alive, self.handles[0].connections = True, 3
        self.notifier.stopping()
        self.assertEqual(self.listener.messages(),
                         [{"STOPPING": "1", "STATUS": "stopping: 1/2 shards alive, 3 connections"}])
        self.clock.advance(5)
        self.assertEqual(self.listener.messages(), [{"WATCHDOG": "1"}])
        self.notifier.stop()
        self.clock.advance(20)
        self.assertEqual(self.listener.messages(), [])


class NodeNotifyTests(SynchronousTestCase):
    """The node as makeService assembles it, started with and without NOTIFY_SOCKET."""

    def make_node(self, environ: dict[str, str]):
        reactor = FakeReactor()
        self.addCleanup(reactor.close_fds)
        self.patch(os, "environ", {**os.environ, **environ})
        cfg = configmod.load(None, environ={}).replace(shards=2, cpu_affinity="off",
                                                       listen__port="tcp:0")
        return reactor, tap.makeService(FakeOptions(Settings.from_config(cfg)), reactor=reactor)

    def test_without_notify_socket(self):
        """Without NOTIFY_SOCKET the node has no notifier: nothing is sent, nothing changes."""
        self.patch(os, "environ", {k: v for k, v in os.environ.items()
                                   if k != "NOTIFY_SOCKET"})
        _, node = self.make_node({})
        self.assertIsNone(node.systemd)

    def test_ready_after_shards_register_and_stopping_on_drain(self):
        """
        The assembled node says READY=1 only once both shards registered
        (not after the first), pings the watchdog, says STOPPING=1 when it
        starts to drain, and its shards get none of systemd's variables.
        """
        listener = NotifyListener(self)
        reactor, node = self.make_node({"NOTIFY_SOCKET": listener.address,
                                        "WATCHDOG_USEC": "4000000"})
        self.addCleanup(signal.signal, signal.SIGHUP, signal.getsignal(signal.SIGHUP))
        node.startService()
        links = []
        for index in range(2):
            shard, pump = connect_shard(reactor, index)
            links.append((shard, pump))
            shard.callRemote(Register, index=index, pid=reactor.processes[index].pid,
                             capacity=100)
            shard.callRemote(Stats, connections=5, capacity=100, status=b'{"accepting": true}')
            pump.flush()
            reactor.advance(systemd.STATUS_INTERVAL)
            fields = {k for m in listener.messages() for k in m}
            self.assertEqual("READY" in fields, index == 1, fields)
            self.assertIn("WATCHDOG", fields)
        for process in reactor.processes:
            for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC"):
                self.assertNotIn(name, process.env)
        d = node.stopService()
        self.assertIn({"STOPPING": "1", "STATUS": "stopping: 2/2 shards alive, 10 connections"},
                      listener.messages())
        for _, pump in links:
            pump.flush()
        for process in reactor.processes:
            if not process.ended:
                process.end(signal=15)
        for _, pump in links:
            pump.flush()
        reactor.advance(30)
        self.successResultOf(d)
        reactor.advance(30)
        self.assertEqual(listener.messages(), [])

