"""
Guards for L{odin_ws.common.twisted_internals}, the one module touching
Twisted's internals: the pinned Twisted version, and each internal it names
with the shape it relies on. When one of these fails after an upgrade, do
not patch the test: read the new Twisted code, adapt
odin_ws/common/twisted_internals.py, then the test.
"""

from __future__ import annotations

import ast
import os
import socket

import twisted.test
from twisted.application.internet import StreamServerEndpointService
from twisted.internet import abstract, main, ssl, tcp
from twisted.internet.defer import inlineCallbacks
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import Factory, Protocol
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase, TestCase

from odin_ws.common import twisted_internals
from odin_ws.common.twisted_internals import (
    HOLDING,
    SENDABLE,
    WRITE,
    has_write_buffer,
    held,
    pending_writers,
    plain_socket,
    producer_of,
    release_shared,
    served_by,
    write_state,
)
from tests.helpers import ROOT, StalledTransport, tcp_pair
from tests.helpers.pins import assert_written_for


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


class PinnedVersionTests(SynchronousTestCase):
    def test_installed_is_the_pinned_version(self):
        """
        The Twisted installed is the one requirements.lock pins and
        twisted_internals was written for.
        """
        assert_written_for(self, twisted_internals.WRITTEN_FOR, "Twisted",
                           "odin_ws/common/twisted_internals.py")


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

    @inlineCallbacks
    def test_writeStateAndSocket(self):
        """
        write_state: SENDABLE while nothing is held, HOLDING while a write
        waits, SENDABLE again once sent, WRITE once closing or aborting;
        plain_socket is the connection's socket, served by this reactor.
        """
        t = self.transport
        self.assertTrue(has_write_buffer(t))
        self.assertIs(plain_socket(t), t.socket)
        self.assertTrue(served_by(t, self.reactor))
        self.assertFalse(served_by(t, object()))
        self.assertEqual(write_state(t), SENDABLE)
        t.write(b"abc")
        self.assertEqual(write_state(t), HOLDING)
        yield self.client.read(3)
        self.assertEqual(write_state(t), SENDABLE)
        t.abortConnection()
        self.assertEqual(write_state(t), WRITE)

    def test_writeStateWhileClosing(self):
        """A connection being closed cleanly is not SENDABLE either."""
        self.transport.loseConnection()
        self.assertEqual(write_state(self.transport), WRITE)

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
    L{pending_writers}: Fanout.flush's inline path sends straight to the
    socket only while the connection's fd is not in the reactor's
    C{_writes} set: Twisted holds bytes for it, or is closing it, exactly
    while it is there.
    """

    def setUp(self):
        super().setUp()
        self.fd = self.transport.fileno()

    def test_noSetNoneReturned(self):
        """A reactor without such a set (a fake clock, another reactor) gets None."""
        from twisted.internet.task import Clock
        self.assertIsNone(pending_writers(Clock()))

    def test_reactorHasTheSet(self):
        """The reactor the shard runs (epoll here) keeps its writers' fds in a set."""
        self.assertIsInstance(self.reactor._writes, set)
        self.assertIs(pending_writers(self.reactor), self.reactor._writes)
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
        """resume_when_drained: setting producerPaused ourselves (below the high-water mark) makes doWrite
        call resumeProducing when the buffer has drained, and clears the flag."""
        self.t.write(b"x" * 10)
        twisted_internals.resume_when_drained(self.t)
        self.assertTrue(self.t.producerPaused)
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




class NotTCPTests(SynchronousTestCase):
    """What the functions answer for transports that are no TCP connection."""

    def test_fileDescriptorNotTCP(self):
        """A FileDescriptor that is no TCP connection: a buffer, no socket, never SENDABLE."""
        t = StalledTransport()
        self.assertTrue(has_write_buffer(t))
        self.assertIsNone(plain_socket(t))
        self.assertEqual(write_state(t), WRITE)
        t.write(b"xy")
        self.assertEqual((write_state(t), held(t)), (HOLDING, 2))

    def test_testTransport(self):
        """A transport without Twisted's buffer: nothing held, no buffer, no socket."""
        from twisted.internet.testing import StringTransport
        t = StringTransport()
        self.assertEqual(held(t), 0)
        self.assertFalse(has_write_buffer(t))
        self.assertIsNone(plain_socket(t))
        self.assertIsNone(producer_of(t))


class TLSTests(SynchronousTestCase):
    """The TLS wrapper: how its producer and the TCP buffer below are found."""

    def setUp(self):
        pem = FilePath(twisted.test.__file__).sibling("server.pem").getContent()
        options = ssl.PrivateCertificate.loadPEM(pem).options()
        self.app = Protocol()
        factory = TLSMemoryBIOFactory(options, False, Factory.forProtocol(lambda: self.app))
        self.tls = factory.buildProtocol(None)
        self.below = StalledTransport()
        self.tls.makeConnection(self.below)

    def test_producerWrappedAndReachable(self):
        """
        registerProducer on TLSMemoryBIOProtocol wraps ours in a membrane
        registered below (_producer._producer is ours); pauses from below
        reach us; unregistering clears it below.
        """
        self.assertIsInstance(self.app.transport, TLSMemoryBIOProtocol)
        self.assertIs(self.tls.transport, self.below)
        producer = Producer()
        self.tls.registerProducer(producer, True)
        self.assertIs(producer_of(self.tls), producer)
        self.assertIs(self.below.producer, self.tls._producer)
        self.assertIs(producer_of(self.below), self.tls._producer)
        self.below.producer.pauseProducing()
        self.assertEqual(producer.calls, ["pause"])
        self.tls.unregisterProducer()
        self.assertIsNone(producer_of(self.tls))
        self.assertIsNone(self.below.producer)

    def test_heldReadsTheTransportBelow(self):
        """held() of a TLS transport is what the TCP transport below holds."""
        held_below = held(self.below)       # the server's TLS bytes, if any, so far
        self.below.write(b"x" * 7)
        self.assertEqual(held(self.tls), held_below + 7)

    def test_noBufferNoSocket(self):
        """A TLS transport is never written to directly."""
        self.assertFalse(has_write_buffer(self.tls))
        self.assertIsNone(plain_socket(self.tls))


class ReleaseSharedTests(SynchronousTestCase):
    def test_shutdownSwitch(self):
        """
        A TCP connection shuts its socket down on close unless
        _shouldShutdown is cleared (what release_shared does); the closer
        still reads the switch.
        """
        import inspect
        self.assertIs(tcp.Connection._shouldShutdown, True)
        self.assertIn("self._shouldShutdown", inspect.getsource(tcp._SocketCloser._closeSocket))
        conn = tcp.Connection.__new__(tcp.Connection)
        release_shared(conn)
        self.assertIs(conn._shouldShutdown, False)


class FailingEndpoint:
    """A server endpoint whose listen fails at once."""

    def listen(self, factory):
        from twisted.internet import defer
        return defer.fail(CannotListenError("127.0.0.1", 1, OSError("in use")))


class RaiseListenErrorsTests(SynchronousTestCase):
    def test_defaultLogsTheFailure(self):
        """Without it, a failure to listen is only logged: the service runs without a port."""
        svc = StreamServerEndpointService(FailingEndpoint(), Factory())
        svc.privilegedStartService()
        self.assertEqual(len(self.flushLoggedErrors(CannotListenError)), 1)

    def test_raisesAtStart(self):
        """With raise_listen_errors, privilegedStartService raises the failure."""
        svc = StreamServerEndpointService(FailingEndpoint(), Factory())
        twisted_internals.raise_listen_errors(svc)
        self.assertRaises(CannotListenError, svc.privilegedStartService)


#: The modules allowed to touch another object's underscore attributes.
INTERNALS = {"odin_ws/common/twisted_internals.py", "odin_ws/common/prometheus_internals.py",
             "odin_ws/shard/clients/autobahn_internals.py"}


def foreign_private_access(path: str) -> list[str]:
    """
    C{name._attr} in C{path} where C{name} is neither C{self}, C{cls} nor a
    class the module defines, and C{super()._attr}: a reach into another
    object's (or a base library's) private state.
    """
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    own = {node.name for node in ast.walk(tree) if isinstance(node, ast.ClassDef)}
    found = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Attribute) and node.attr.startswith("_")
                and not node.attr.startswith("__")):
            continue
        if node.attr[1:].isupper():
            continue    # a documented constant (confluent-kafka's KafkaError._TRANSPORT)
        base = node.value
        if isinstance(base, ast.Name) and base.id in ({"self", "cls"} | own):
            continue
        found.append(f"{path}:{node.lineno}: {ast.unparse(node)}")
    return found


class PrivateContactTests(SynchronousTestCase):
    def test_no_foreign_private_access(self):
        """
        Outside the internals modules, no module of the daemon (parent,
        shard, common, the plugin glue) reads or writes another object's
        underscore attributes (Twisted's, Autobahn's, or another odinws
        class's).
        """
        found = []
        for area in ("odin_ws/shard", "odin_ws/common", "odin_ws/parent", "odin_ws"):
            for name in sorted(os.listdir(os.path.join(ROOT, area))):
                rel = f"{area}/{name}"
                if name.endswith(".py") and rel not in INTERNALS:
                    found += foreign_private_access(os.path.join(ROOT, rel))
        self.assertEqual(found, [])

    def test_checker_sees_a_reach(self):
        """
        The checker flags other._private and super()._private, not
        self._own, a module's own class, or an upper-case constant.
        """
        import tempfile
        with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
            f.write("class A:\n    def f(self, t):\n        self._own = t._theirs\n"
                    "        super()._step()\n        A._k = 1\n        e = E._CODE\n")
        self.addCleanup(os.unlink, f.name)
        self.assertEqual([line.split(": ", 1)[1] for line in foreign_private_access(f.name)],
                         ["t._theirs", "super()._step"])


class PromptCloseTLSTests(SynchronousTestCase):
    """The TLS step L{twisted_internals.PromptCloseTLS} extends."""

    def test_shutdown_step_is_what_lose_connection_calls(self):
        """
        C{TLSMemoryBIOProtocol._shutdownTLS} still exists and is the step
        C{loseConnection} takes once the application's bytes are in TLS (so
        extending it closes the TCP connection beneath after a refusal).
        """
        import inspect

        from odin_ws.common.twisted_internals import PromptCloseTLS
        self.assertTrue(callable(TLSMemoryBIOProtocol._shutdownTLS))
        self.assertIn("self._shutdownTLS()", inspect.getsource(TLSMemoryBIOProtocol.loseConnection))
        self.assertTrue(issubclass(PromptCloseTLS, TLSMemoryBIOProtocol))


class AcceptingPortTests(TestCase):
    """
    The listening port behind an accepted connection, and the bound on its
    accept loop (odin_ws/parent/acceptpause.py relies on both).
    """

    def test_acceptedConnectionNamesItsPort(self):
        """
        A connection accepted by a real tcp.Port is a tcp.Server whose
        C{server} is that port, which has C{numberAccepts} (100 at first)
        and the file descriptor's stopReading/startReading; other
        transports have no port.
        """
        from twisted.internet import defer, reactor
        made: defer.Deferred = defer.Deferred()

        class Accepted(Protocol):
            def connectionMade(self):
                made.callback(self.transport)

        port = reactor.listenTCP(0, Factory.forProtocol(Accepted), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.assertIsInstance(port, tcp.Port)
        self.assertIsInstance(port, abstract.FileDescriptor)
        self.assertEqual(port.numberAccepts, 100)
        client = socket.create_connection(("127.0.0.1", port.getHost().port))
        self.addCleanup(client.close)

        def check(transport):
            self.assertIs(twisted_internals.accepting_port(transport), port)
            self.assertIsNone(twisted_internals.accepting_port(StalledTransport()))
            twisted_internals.limit_accepts(port, 7)
            self.assertEqual(port.numberAccepts, 7)
            twisted_internals.limit_accepts(port, 0)
            self.assertEqual(port.numberAccepts, 1)
            transport.abortConnection()
        return made.addCallback(check)

    def test_acceptLoopReadsTheBoundWhenItStarts(self):
        """tcp.Port.doRead takes C{numberAccepts} when a loop starts (the shape relied on)."""
        source = FilePath(tcp.__file__).getContent().decode()
        tree = ast.parse(source)
        port = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Port")
        do_read = next(n for n in port.body
                       if isinstance(n, ast.FunctionDef) and n.name == "doRead")
        self.assertIn("numAccepts = self.numberAccepts", ast.unparse(do_read))
        self.assertIn("range(numAccepts)", ast.unparse(do_read))


class EndpointBacklogTests(SynchronousTestCase):
    """The backlog= of an endpoint string, as Twisted's TCP endpoints keep it."""

    def test_tcp_endpoints(self):
        """tcp, tcp6 and unix endpoints give theirs, 50 (Twisted's default) without one."""
        from twisted.internet.endpoints import serverFromString
        from twisted.internet.testing import MemoryReactor
        reactor = MemoryReactor()
        self.assertEqual(twisted_internals.endpoint_backlog(
            serverFromString(reactor, "tcp:3005:backlog=4096")), 4096)
        self.assertEqual(twisted_internals.endpoint_backlog(
            serverFromString(reactor, "tcp6:3005:backlog=77")), 77)
        self.assertEqual(twisted_internals.endpoint_backlog(
            serverFromString(reactor, "tcp:3005")), 50)
        self.assertEqual(twisted_internals.endpoint_backlog(
            serverFromString(reactor, "unix:/tmp/x.sock:backlog=9")), 9)
        self.assertIsNone(twisted_internals.endpoint_backlog(object()))

