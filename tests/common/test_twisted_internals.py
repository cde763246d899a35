"""
Guards for what L{odin_ws.shard.writer} assumes about Twisted's and Autobahn's
internals. When one of these fails after an upgrade, do not patch the test:
read the new Twisted/Autobahn code, adapt odin_ws/shard/writer.py, then the test.
"""

from __future__ import annotations

import os
import re
import socket
from importlib import metadata

import twisted.test
from autobahn.websocket.protocol import WebSocketProtocol
from twisted.internet import abstract, main, ssl, tcp
from twisted.internet.defer import inlineCallbacks
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase, TestCase

from odin_ws.common.twisted_internals import held
from odin_ws.common.twisted_internals import producer_of as _producer_of
from odin_ws.shard.fanout import Fanout, WriteStats
from odin_ws.shard.outbox import Outbox
from tests.helpers import (
    PLAIN_UPGRADE,
    ROOT,
    FakeProtocol,
    StalledTransport,
    handshaken_protocol,
    parse_frames,
    tcp_pair,
)

LOCK = os.path.join(ROOT,
                    "requirements.lock")


class Producer:
    """A streaming producer that records the calls its consumer makes."""

    def __init__(self):
        self.calls: list[str] = []

    def pauseProducing(self):
        self.calls.append("pause")

    def resumeProducing(self):
        self.calls.append("resume")

    def stopProducing(self):
        self.calls.append("stop")


def pinned(name: str) -> str:
    with open(LOCK) as f:
        for line in f:
            m = re.match(r"\s*([A-Za-z0-9_.-]+)\s*==\s*([^\s;#]+)", line)
            if m and m.group(1).lower() == name.lower():
                return m.group(2)
    raise AssertionError(f"{name} is not pinned in {LOCK}")


class PinnedVersionTests(SynchronousTestCase):
    def test_installedAreThePinnedVersions(self):
        """The Twisted and Autobahn installed are the ones requirements.lock pins and
        these guards were written against."""
        for name in ("Twisted", "autobahn"):
            self.assertEqual(metadata.version(name), pinned(name),
                             f"{name} differs from requirements.lock: re-run tests/"
                             "test_writepath.py against it and update the pin")


class AdoptedConnectionCase(TestCase):
    """Tests on a real adopted TCP connection (C{self.transport}) and its client."""

    def setUp(self):
        from twisted.internet import reactor
        self.reactor = reactor
        self.sink, self.client = tcp_pair(reactor)
        self.transport = self.sink.transport

        def cleanup():
            self.client.sock.close()
            self.transport.abortConnection()
            return self.sink.lost
        self.addCleanup(cleanup)


class TCPTransportTests(AdoptedConnectionCase):
    """A real adopted TCP connection: the attributes the direct path reads."""

    def test_classAndAttributes(self):
        """An adopted stream socket is a tcp.Server (a FileDescriptor) with the buffer
        attributes, flags and socket the writer reads."""
        t = self.transport
        self.assertIsInstance(t, tcp.Server)
        self.assertIsInstance(t, tcp.Connection)
        self.assertIsInstance(t, abstract.FileDescriptor)
        self.assertIsInstance(t.socket, socket.socket)
        self.assertEqual((t.dataBuffer, t.offset, t._tempDataBuffer, t._tempDataLen),
                         (b"", 0, [], 0))
        self.assertTrue(t.connected)
        self.assertFalse(t.disconnecting)
        self.assertFalse(t._aborting)
        self.assertFalse(t.TLS)
        self.assertIsNone(t.producer)
        self.assertFalse(t.producerPaused)
        self.assertEqual(t.bufferSize, 65536)

    @inlineCallbacks
    def test_writeBuffersUntilTheReactorSends(self):
        """transport.write only appends to _tempDataBuffer/_tempDataLen; the reactor's
        doWrite later sends it and leaves dataBuffer empty at offset 0."""
        t = self.transport
        t.write(b"abc")
        t.write(b"de")
        self.assertEqual((t._tempDataBuffer, t._tempDataLen), ([b"abc", b"de"], 5))
        self.assertEqual(held(t), 5)
        data = yield self.client.read(5)
        self.assertEqual(data, b"abcde")
        self.assertEqual((t.dataBuffer, t.offset, t._tempDataLen), (b"", 0, 0))
        self.assertEqual(held(t), 0)

    def test_closeFlags(self):
        """loseConnection sets disconnecting; abortConnection sets _aborting."""
        self.transport.loseConnection()
        self.assertTrue(self.transport.disconnecting)
        self.transport.abortConnection()
        self.assertTrue(self.transport._aborting)

    @inlineCallbacks
    def test_connectionLostStopsProducerAndClearsConnected(self):
        """When the connection is lost the registered producer gets stopProducing and
        the transport reads as not connected (checked before touching .socket)."""
        producer = Producer()
        self.transport.registerProducer(producer, True)
        self.transport.abortConnection()
        yield self.sink.lost
        self.assertEqual(producer.calls, ["stop"])
        self.assertFalse(self.transport.connected)
        self.assertFalse(hasattr(self.transport, "socket"))


class WritesSetTests(AdoptedConnectionCase):
    """
    Fanout.flush's inline path sends straight to the socket only while the
    connection's fd is not in the reactor's C{_writes} set: Twisted holds
    bytes for it, or is closing it, exactly while it is there.
    """

    def setUp(self):
        super().setUp()
        self.fd = self.transport.fileno()

    def test_reactorHasTheSet(self):
        """The reactor the shard runs (epoll here) keeps its writers' fds in a set."""
        self.assertIsInstance(self.reactor._writes, set)
        self.assertIsNotNone(Fanout(self.reactor, WriteStats()).writes)
        self.assertNotIn(self.fd, self.reactor._writes)

    @inlineCallbacks
    def test_heldBytesMeanRegisteredForWriting(self):
        """A buffered write puts the fd in the set; once doWrite sent it all, it leaves."""
        self.transport.write(b"abc")
        self.assertIn(self.fd, self.reactor._writes)
        yield self.client.read(3)
        self.assertEqual(held(self.transport), 0)
        self.assertNotIn(self.fd, self.reactor._writes)

    def test_loseConnectionRegistersForWriting(self):
        """A closing connection stays in the set until it is lost."""
        self.transport.loseConnection()
        self.assertTrue(self.transport.disconnecting)
        self.assertIn(self.fd, self.reactor._writes)

    def test_abortLeavesTheSet(self):
        """
        abortConnection takes the fd out before the connection is lost (a
        reactor turn later): the shard closes its Outboxes before aborting.
        """
        self.transport.abortConnection()
        self.assertNotIn(self.fd, self.reactor._writes)
        self.assertTrue(self.transport.connected)


class HolderTests(SynchronousTestCase):
    """OutboxHolder sees every state change Autobahn makes."""

    def test_closeFrameClosesTheOutbox(self):
        from autobahn.twisted.websocket import WebSocketServerProtocol

        from odin_ws.shard.outbox import OutboxHolder

        class Held(OutboxHolder, WebSocketServerProtocol):
            pass
        proto, transport = handshaken_protocol(Held)
        self.assertEqual(proto.state, WebSocketProtocol.STATE_OPEN)
        box = Outbox(proto, Fanout(Clock(), WriteStats()), lambda t: "drop", 1 << 20, 5.0,
                     lambda: None)
        proto.outbox = box
        box.push(b"x", "a", "t")
        proto.sendClose(4008, "slow consumer")
        self.assertEqual(proto.state, WebSocketProtocol.STATE_CLOSING)
        self.assertTrue(box.closed)
        self.assertEqual(box.queued(), 0)
        self.assertIsNone(transport.producer)


class ProducerContractTests(SynchronousTestCase):
    """abstract.FileDescriptor's streaming-producer contract, which Outbox relies on."""

    def setUp(self):
        self.t = StalledTransport()
        self.producer = Producer()
        self.t.registerProducer(self.producer, True)

    def test_pausedPastHighWaterResumedWhenDrained(self):
        """A write that leaves more than bufferSize (64 KiB) held pauses the producer at
        once; draining everything resumes it once."""
        self.t.write(b"x" * 65536)
        self.assertEqual(self.producer.calls, [])
        self.t.write(b"x")
        self.assertEqual(self.producer.calls, ["pause"])
        self.assertTrue(self.t.producerPaused)
        self.t.drain()
        self.assertEqual(self.producer.calls, ["pause", "resume"])
        self.assertFalse(self.t.producerPaused)

    def test_producerPausedFlagAsksForResume(self):
        """Setting producerPaused ourselves (below the high-water mark) makes doWrite
        call resumeProducing when the buffer has drained, and clears the flag."""
        self.t.write(b"x" * 10)
        self.t.producerPaused = True
        self.t.drain()
        self.assertEqual(self.producer.calls, ["resume"])
        self.assertFalse(self.t.producerPaused)

    def test_loseConnectionWaitsForPausedProducer(self):
        """With a paused producer, a drained doWrite resumes it instead of closing; after
        unregisterProducer the close completes (why Outbox closes on a resume while
        disconnecting)."""
        self.t.write(b"x" * 10)
        self.t.producerPaused = True
        self.t.loseConnection()
        self.t.allow = 100
        self.assertIsNone(self.t.doWrite())
        self.assertEqual(self.producer.calls, ["resume"])
        self.t.unregisterProducer()
        self.assertIs(self.t.doWrite(), main.CONNECTION_DONE)

    def test_registerTwiceRaises(self):
        """A second producer is refused (Outbox registers once per connection)."""
        self.assertRaises(RuntimeError, self.t.registerProducer, Producer(), True)


class AutobahnTests(SynchronousTestCase):
    """What the writer assumes of Autobahn's server protocol."""

    def test_states(self):
        """STATE_OPEN exists and differs from the closing and closed states."""
        states = {WebSocketProtocol.STATE_OPEN, WebSocketProtocol.STATE_CLOSING,
                  WebSocketProtocol.STATE_CLOSED}
        self.assertEqual(len(states), 3)

    def test_closeFrameLeavesOpenState(self):
        """sendClose writes the close frame and leaves STATE_OPEN in the same call, so
        checking the state before each flush keeps data frames off after it."""
        proto, transport = handshaken_protocol()
        proto.sendClose(1000)
        self.assertEqual(proto.state, WebSocketProtocol.STATE_CLOSING)
        self.assertEqual([op for op, _ in parse_frames(transport.value())], [8])

    def test_sendMessageWritesThrough(self):
        """Autobahn's own messages go to transport.write at once (no queue of its own),
        so 'Twisted holds nothing' means nothing of Autobahn's is pending either."""
        proto, transport = handshaken_protocol()
        proto.sendMessage(b"{}")
        self.assertEqual(parse_frames(transport.value()), [(1, b"{}")])
        self.assertEqual(len(proto.send_queue), 0)

    def test_dropConnectionUnregistersProducer(self):
        """dropConnection unregisters the transport's producer before closing, so a
        paused Outbox never holds a closing connection open."""
        proto, transport = handshaken_protocol()
        box = Outbox(proto, Fanout(Clock(), WriteStats()), lambda t: "drop", 1 << 20, 5.0,
                     lambda: None)
        self.assertIs(transport.producer, box)
        proto.dropConnection(abort=True)
        self.assertIsNone(transport.producer)


class TLSTests(SynchronousTestCase):
    """The TLS wrapper: how the writer finds its producer and the TCP buffer below."""

    def setUp(self):
        pem = FilePath(twisted.test.__file__).sibling("server.pem").getContent()
        options = ssl.PrivateCertificate.loadPEM(pem).options()
        self.app = Protocol()
        factory = TLSMemoryBIOFactory(options, False, Factory.forProtocol(lambda: self.app))
        self.tls = factory.buildProtocol(None)
        self.below = StalledTransport()
        self.tls.makeConnection(self.below)

    def test_producerWrappedAndReachable(self):
        """registerProducer on TLSMemoryBIOProtocol wraps ours in a membrane registered
        below (_producer._producer is ours); pauses from below reach us; close()
        unregisters."""
        self.assertIsInstance(self.app.transport, TLSMemoryBIOProtocol)
        self.assertIs(self.tls.transport, self.below)
        box = Outbox(FakeProtocol(self.tls), Fanout(Clock(), WriteStats()),
                     lambda t: "drop", 1 << 20, 5.0, lambda: None)
        self.assertIs(_producer_of(self.tls), box)
        self.assertIs(self.below.producer, self.tls._producer)
        self.below.producer.pauseProducing()
        self.assertTrue(box.paused)
        box.close()
        self.assertIsNone(self.below.producer)

    def test_heldReadsTheTransportBelow(self):
        """held() of a TLS transport is what the TCP transport below holds."""
        held_below = held(self.below)       # the server's TLS bytes, if any, so far
        self.below.write(b"x" * 7)
        self.assertEqual(held(self.tls), held_below + 7)


class NoDelayTests(TestCase):
    """
    Events are small writes: with Nagle on, a client that delays its ACKs
    holds every next event up to ~40 ms. Autobahn 26.10 means to set
    TCP_NODELAY but never does (it reads the option before copying it from
    the factory); the shard's protocol sets it itself.
    """

    def setUp(self):
        from twisted.internet import reactor
        self.reactor = reactor

    def connected(self, wrap=lambda factory: factory):
        import txaio

        from odin_ws.common import config as configmod
        from odin_ws.shard.service import Shard
        self.patch(txaio.config, "loop", self.reactor)
        shard = Shard(Clock(), configmod.load(None, environ={}), 0, control_fd=None)
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
        proto = self.connected()
        self.assertIsInstance(proto.transport, tcp.Server)
        self.assertEqual(self.nodelay(proto.transport), 1)

    def test_clientConnectionsLimitUnsent(self):
        """The shard applies outbound.kernel_unsent_bytes to its client sockets."""
        proto = self.connected()
        sock = proto.transport.getHandle()
        self.assertEqual(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT), 65536)

    def test_tlsClientConnectionsHaveNoDelay(self):
        from odin_ws.shard import tls as tlsmod
        cert = FilePath(twisted.test.__file__).sibling("server.pem")
        options = ssl.PrivateCertificate.loadPEM(cert.getContent()).options()
        proto = self.connected(lambda factory: tlsmod.wrap(options, factory))
        transport = proto.transport
        while not isinstance(transport, tcp.Server):   # the TLS layer(s) down to TCP
            transport = transport.transport
        self.assertIsNot(transport, proto.transport)
        self.assertEqual(self.nodelay(transport), 1)

    def test_autobahnAloneLeavesNagleOn(self):
        """
        The reason for the workaround: when this fails, Autobahn sets the
        option itself and ClientProtocol.connectionMade's own call can go.
        """
        from autobahn.twisted.websocket import (
            WebSocketServerFactory,
            WebSocketServerProtocol,
        )
        factory = WebSocketServerFactory()
        factory.protocol = WebSocketServerProtocol
        factory.setProtocolOptions(tcpNoDelay=True, openHandshakeTimeout=0,
                                   closeHandshakeTimeout=0, autoPingInterval=0)
        self.patch(__import__("txaio").config, "loop", self.reactor)
        made = []
        original = factory.buildProtocol
        factory.buildProtocol = lambda addr: made.append(original(addr)) or made[-1]
        _, client = tcp_pair(self.reactor, factory=factory)
        [proto] = made
        self.addCleanup(client.sock.close)
        self.addCleanup(proto.transport.abortConnection)
        self.assertEqual(self.nodelay(proto.transport), 0)


class ShardConnectionTests(TestCase):
    """The shard's own client connections qualify for the inline path."""

    @inlineCallbacks
    def test_openConnectionIsDirect(self):
        import txaio
        from twisted.internet import reactor

        from odin_ws.common import config as configmod
        from odin_ws.shard.service import Shard
        self.patch(txaio.config, "loop", reactor)
        shard = Shard(reactor, configmod.load(None, environ={}), 0, control_fd=None)
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
