"""Real loopback socket fixtures (handoff and dispatcher tests)."""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

from twisted.internet import defer, protocol, reactor, task
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorSocket, IReadDescriptor
from twisted.internet.protocol import Factory, Protocol
from twisted.protocols import amp
from zope.interface import implementer

from odin_ws.common import commands, handoff


class Collector(protocol.Protocol):
    """A client (or a server-side holder) that records bytes and how it was closed."""

    def __init__(self):
        self.data = b""
        self.made = defer.Deferred()
        self.lost = defer.Deferred()
        self._waiters: list[tuple[bytes, defer.Deferred]] = []

    def connectionMade(self):
        self.made.callback(self)

    def dataReceived(self, data):
        self.data += data
        for waiter in list(self._waiters):
            if self.data.endswith(waiter[0]):
                self._waiters.remove(waiter)
                waiter[1].callback(self.data)

    def until_endswith(self, suffix: bytes) -> defer.Deferred:
        if self.data.endswith(suffix):
            return defer.succeed(self.data)
        d: Deferred[bytes] = defer.Deferred()
        self._waiters.append((suffix, d))
        return d.addTimeout(10, reactor)

    def connectionLost(self, reason):
        # Kept aside: a Failure passed to callback() would run the errbacks.
        self.reason = reason
        self.lost.callback(None)


class RealSocketMixin:
    """Real sockets on the global reactor, for a C{unittest.TestCase}."""

    if TYPE_CHECKING:  # provided by the TestCase it is mixed into
        addCleanup: Callable[..., None]
        assertEqual: Callable[..., None]

    @defer.inlineCallbacks
    def connected_pair(self, interface: str, server_factory=None):
        """A listening port, a connected client and the server-side protocol."""
        server_factory = server_factory or BuiltFactory(Collector)
        port = reactor.listenTCP(0, server_factory, interface=interface)
        self.addCleanup(port.stopListening)
        client = Collector()
        yield protocol.ClientCreator(reactor, lambda: client).connectTCP(
            interface, cast(IPv4Address, port.getHost()).port)
        while not server_factory.built:
            yield task.deferLater(reactor, 0.001, lambda: None)
        server = server_factory.built[0]
        yield server.made
        return server, client

    def control_channel(self) -> tuple[ParentSide, ShardSide]:
        """A real AMP pair on a Unix socketpair, as parent and shard have; closed at cleanup."""
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        parent_factory, shard_factory = BuiltFactory(ParentSide), BuiltFactory(ShardSide)
        adopt = cast(IReactorSocket, reactor).adoptStreamConnection
        adopt(a.fileno(), socket.AF_UNIX, parent_factory)
        adopt(b.fileno(), socket.AF_UNIX, shard_factory)
        # The reactor holds duplicates; these copies are not needed.
        a.close()
        b.close()
        parent, shard = parent_factory.built[0], shard_factory.built[0]

        def close():
            parent.transport.loseConnection()
            return defer.gatherResults([parent.lost, shard.lost])

        self.addCleanup(close)
        return parent, shard

    @defer.inlineCallbacks
    def finish_session(self, client: Collector, echo: Echo):
        """Talk to the echo through the client, then let the echo close."""
        client.transport.write(b"ping")
        yield client.until_endswith(b"ping")
        client.transport.write(b"bye")
        yield client.lost.addTimeout(10, reactor)
        yield echo.lost.addTimeout(10, reactor)


    def assertNoLinger(self, holder: Collector) -> None:
        """
        The shared socket has no SO_LINGER(1, 0), which would turn the new
        owner's close into a reset (the race decides whether a client notices).
        """
        skt = holder.transport.getHandle()
        onoff, _ = struct.unpack("ii", skt.getsockopt(socket.SOL_SOCKET, socket.SO_LINGER, 8))
        self.assertEqual(onoff, 0)




@implementer(IReadDescriptor)
class LoopbackClient:
    """The client end of a loopback TCP pair: read only when the test says so."""

    def __init__(self, reactor, sock: socket.socket):
        self.reactor = reactor
        self.sock = sock
        self.data = bytearray()
        self._want: Callable[[bytearray], bool] = lambda data: False
        self._done: Deferred | None = None

    def read(self, n, timeout: float = 30.0) -> Deferred:
        """
        Fires with everything read once at least C{n} bytes came, or once
        C{n(data)} is true if C{n} is callable; fails after C{timeout}.
        """
        self._want = n if callable(n) else (lambda data: len(data) >= n)
        self._done = Deferred()
        d = self._done
        self.reactor.addReader(self)
        self._check()
        return d.addTimeout(timeout, self.reactor).addBoth(self._stop)

    def _stop(self, result):
        self.reactor.removeReader(self)
        return result

    def _check(self) -> None:
        if self._done is not None and self._want(self.data):
            d, self._done = self._done, None
            d.callback(bytes(self.data))

    def fileno(self):
        return self.sock.fileno()

    def doRead(self):
        try:
            chunk = self.sock.recv(1 << 20)
        except BlockingIOError:
            return None
        if not chunk:
            d, self._done = self._done, None
            if d is not None:
                d.errback(ConnectionError(f"peer closed after {len(self.data)} bytes"))
            self.reactor.removeReader(self)
            return None
        self.data += chunk
        self._check()
        return None

    def connectionLost(self, reason):
        pass

    def logPrefix(self):
        return "test-client"

    def fill_kernel(self, server: socket.socket) -> int:
        """Send junk from C{server} until the kernel refuses more; bytes sent."""
        total = 0
        while True:
            try:
                total += server.send(b"\0" * 65536)
            except BlockingIOError:
                return total


def tcp_pair(reactor, sndbuf: int = 0, rcvbuf: int = 0, factory=None) -> tuple[Sink, LoopbackClient]:
    """
    A connected loopback TCP pair: the server end adopted by C{reactor} (a real
    L{tcp.Server}) with a L{Sink} (or C{factory}'s protocol), the client end a
    non-blocking plain socket.
    """
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    client = socket.socket()
    if rcvbuf:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    client.connect(listener.getsockname())
    server, _ = listener.accept()
    listener.close()
    if sndbuf:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
    server.setblocking(False)
    sink = Sink()
    reactor.adoptStreamConnection(server.fileno(), socket.AF_INET,
                                  factory or Factory.forProtocol(lambda: sink))
    server.close()
    client.setblocking(False)
    return sink, LoopbackClient(reactor, client)


class BuiltFactory(protocol.Factory):
    """A factory that remembers every protocol it built."""

    def __init__(self, cls):
        self.protocol = cls
        self.built: list = []

    def buildProtocol(self, addr):
        p = super().buildProtocol(addr)
        self.built.append(p)
        return p


class Echo(Collector):
    """The shard's stand-in protocol: echoes, and on "bye" sends its last bytes and closes."""

    def __init__(self):
        super().__init__()
        self.chunks: list[bytes] = []

    def dataReceived(self, data):
        self.chunks.append(data)
        if data.endswith(b"bye"):
            self.transport.write(b"last")
            self.transport.loseConnection()
        else:
            self.transport.write(data)


class ParentSide(amp.AMP):
    def __init__(self):
        super().__init__()
        self.lost = defer.Deferred()

    def connectionLost(self, reason):
        super().connectionLost(reason)
        self.lost.callback(None)


class ShardSide(amp.AMP):
    """The shard end of the control channel: adopts handed-over sockets with Echo."""

    refuse = False

    def __init__(self):
        super().__init__()
        self.lost = defer.Deferred()
        self.adopted: list[Echo] = []

    @commands.Handoff.responder
    def handoff(self, fd, head, peer, tls):
        if self.refuse:
            os.close(fd)
            raise commands.HandoffRefused("full")
        self.peer = peer
        self.adopted.append(handoff.adopt(reactor, fd, protocol.Factory.forProtocol(Echo), head))
        return {"connections": len(self.adopted)}

    def connectionLost(self, reason):
        super().connectionLost(reason)
        self.lost.callback(None)





class Sink(Protocol):
    """The server side of a loopback pair: just a transport to write on."""

    def __init__(self):
        self.lost = Deferred()

    def connectionLost(self, reason):
        self.lost.callback(None)
