"""
The shard's client connections: the registry (L{odin_ws.shard.clients.connections}),
and over real loopback TCP sockets and the real reactor, socket options and
the Outbox of an open connection.
"""

from __future__ import annotations

import socket

import twisted.test
from twisted.internet import ssl, tcp
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock
from twisted.python.filepath import FilePath
from twisted.trial.unittest import TestCase

from tests.helpers import PLAIN_UPGRADE, make_settings, tcp_pair


class NoDelayTests(TestCase):
    """
    Events are small writes: with Nagle on, a client that delays its ACKs
    holds every next event up to ~40 ms. Autobahn does not set TCP_NODELAY
    (tests/shard/clients/test_autobahn_internals.py); the shard's protocol does.
    """

    def setUp(self):
        from twisted.internet import reactor
        self.reactor = reactor

    def connected(self, wrap=lambda factory: factory):
        import txaio

        from odin_ws.shard.service import Shard
        self.patch(txaio.config, "loop", self.reactor)
        shard = Shard(Clock(), make_settings(), 0, control_fd=None)
        made = []
        original = shard.factory.buildProtocol

        def build(addr):
            proto = original(addr)
            made.append(proto)
            return proto
        shard.factory.buildProtocol = build
        _, client = tcp_pair(self.reactor, factory=wrap(shard.factory))
        [proto] = made
        self.addCleanup(client.sock.close)
        self.addCleanup(proto.transport.abortConnection)
        return proto

    @staticmethod
    def nodelay(transport) -> int:
        sock = transport.getHandle()
        return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)

    def test_clientConnectionsHaveNoDelay(self):
        """The shard's plain TCP client connections have TCP_NODELAY set."""
        proto = self.connected()
        self.assertIsInstance(proto.transport, tcp.Server)
        self.assertEqual(self.nodelay(proto.transport), 1)

    def test_clientConnectionsLimitUnsent(self):
        """The shard applies outbound.kernel_unsent_bytes to its client sockets."""
        proto = self.connected()
        sock = proto.transport.getHandle()
        self.assertEqual(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT), 65536)

    def test_tlsClientConnectionsHaveNoDelay(self):
        """Under TLS, the TCP connection below has TCP_NODELAY set."""
        from odin_ws.shard.clients import tls as tlsmod
        cert = FilePath(twisted.test.__file__).sibling("server.pem")
        options = ssl.PrivateCertificate.loadPEM(cert.getContent()).options()
        proto = self.connected(lambda factory: tlsmod.wrap(options, factory))
        transport = proto.transport
        while not isinstance(transport, tcp.Server):   # the TLS layer(s) down to TCP
            transport = transport.transport
        self.assertIsNot(transport, proto.transport)
        self.assertEqual(self.nodelay(transport), 1)


class ShardConnectionTests(TestCase):
    """The shard's own client connections qualify for the inline path."""

    @inlineCallbacks
    def test_openConnectionIsDirect(self):
        """
        A shard client connection, once open, has an Outbox that Fanout's
        inline flush may write straight to its socket.
        """
        import txaio
        from twisted.internet import reactor

        from odin_ws.shard.service import Shard
        self.patch(txaio.config, "loop", reactor)
        shard = Shard(reactor, make_settings(), 0, control_fd=None)
        made = []
        original = shard.factory.buildProtocol
        shard.factory.buildProtocol = lambda addr: made.append(original(addr)) or made[-1]
        _, client = tcp_pair(reactor, factory=shard.factory)
        [proto] = made
        self.addCleanup(client.sock.close)
        self.addCleanup(lambda: proto.transport.connected and proto.transport.abortConnection())
        client.sock.send(PLAIN_UPGRADE)   # GET /ws, the default listen.ws_path
        head = yield client.read(lambda data: b"\r\n\r\n" in data)
        self.assertTrue(head.startswith(b"HTTP/1.1 101 "), head)
        box = proto.outbox
        self.assertIsNotNone(box)
        self.assertTrue(box.inline)
        self.assertIs(box.sock, proto.transport.socket)
        self.assertEqual(box.fdno, proto.transport.fileno())


class RegistryTests(TestCase):
    """L{Connections}: the shard's open connections and the count per address."""

    def registry(self, per_ip: int = 2):
        from odin_ws.common import config as configmod
        from odin_ws.common.settings import Settings
        from odin_ws.shard.clients.connections import Connections
        clock = Clock()
        settings = Settings.from_config(configmod.load(None, environ={}).replace(
            limits__max_connections_per_ip=per_ip))
        return clock, Connections(clock, settings)

    def test_per_ip_share(self):
        """An address gets limits.max_connections_per_ip connections; a release makes room."""
        _, reg = self.registry(per_ip=2)
        self.assertEqual([reg.admit_ip("1.1.1.1") for _ in range(3)], [True, True, False])
        self.assertTrue(reg.admit_ip("2.2.2.2"))
        reg.release_ip("1.1.1.1")
        self.assertEqual(reg.per_ip, {"1.1.1.1": 1, "2.2.2.2": 1})
        self.assertTrue(reg.admit_ip("1.1.1.1"))
        reg.release_ip("2.2.2.2")
        self.assertNotIn("2.2.2.2", reg.per_ip)

    def test_close_all_spreads_and_fires_when_the_last_is_gone(self):
        """
        close_all closes every connection with the code, spread over the
        window, and fires with their number once the last one is lost.
        """
        from twisted.internet.testing import StringTransport
        clock, reg = self.registry()

        class Client:
            def __init__(self):
                self.transport = StringTransport()
                self.closed = None

            def close(self, code, reason):
                self.closed = (clock.seconds(), code)

        clients = [Client() for _ in range(4)]
        for c in clients:
            reg.made(c)
        self.assertEqual(len(reg), 4)
        done = []
        reg.close_all(2.0, 4000, "restarting").addCallback(done.append)
        clock.pump([0.0] + [0.5] * 3)
        self.assertEqual(sorted(c.closed for c in clients),
                         [(0.0, 4000), (0.5, 4000), (1.0, 4000), (1.5, 4000)])
        for c in clients[:-1]:
            reg.lost(c)
        self.assertEqual(done, [])
        reg.lost(clients[-1])
        self.assertEqual(done, [4])
