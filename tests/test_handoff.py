"""
Tests for L{odin_ws.common.handoff}: real TCP sockets and real descriptor passing
over AMP on a Unix socketpair, in one process and one real reactor.
"""

from __future__ import annotations

import errno
import os
import socket
import struct

from twisted.internet import defer, error, protocol, reactor, task
from twisted.internet.testing import StringTransport
from twisted.protocols import amp
from twisted.trial import unittest

from odin_ws.common import commands as control
from odin_ws.common import handoff


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
        d = defer.Deferred()
        self._waiters.append((suffix, d))
        return d.addTimeout(10, reactor)

    def connectionLost(self, reason):
        # Kept aside: a Failure passed to callback() would run the errbacks.
        self.reason = reason
        self.lost.callback(None)


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


class BuiltFactory(protocol.Factory):
    """A factory that remembers every protocol it built."""

    def __init__(self, cls):
        self.protocol = cls
        self.built: list = []

    def buildProtocol(self, addr):
        p = super().buildProtocol(addr)
        self.built.append(p)
        return p


class RealSocketMixin:
    @defer.inlineCallbacks
    def connected_pair(self, interface: str, server_factory=None):
        """A listening port, a connected client and the server-side protocol."""
        server_factory = server_factory or BuiltFactory(Collector)
        port = reactor.listenTCP(0, server_factory, interface=interface)
        self.addCleanup(port.stopListening)
        client = Collector()
        yield protocol.ClientCreator(reactor, lambda: client).connectTCP(
            interface, port.getHost().port)
        while not server_factory.built:
            yield task.deferLater(reactor, 0.001, lambda: None)
        server = server_factory.built[0]
        yield server.made
        return server, client

    def control_channel(self) -> tuple["ParentSide", "ShardSide"]:
        """A real AMP pair on a Unix socketpair, as parent and shard have; closed at cleanup."""
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        parent_factory, shard_factory = BuiltFactory(ParentSide), BuiltFactory(ShardSide)
        reactor.adoptStreamConnection(a.fileno(), socket.AF_UNIX, parent_factory)
        reactor.adoptStreamConnection(b.fileno(), socket.AF_UNIX, shard_factory)
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


class ReleaseTests(RealSocketMixin, unittest.TestCase):
    @defer.inlineCallbacks
    def check_release(self, interface: str):
        parent, client = yield self.connected_pair(interface)
        echo = handoff.adopt(reactor, os.dup(parent.transport.fileno()),
                             protocol.Factory.forProtocol(Echo), b"HEAD:")
        handoff.release(parent.transport)
        yield parent.lost.addTimeout(10, reactor)
        self.assertNoLinger(echo)
        yield self.finish_session(client, echo)
        reason = client.reason
        self.assertEqual(client.data, b"HEAD:pinglast")
        self.assertEqual(echo.chunks[0], b"HEAD:")
        # FIN, not RST: ConnectionDone, and the last bytes arrived.
        self.assertTrue(reason.check(error.ConnectionDone), reason)

    def test_release_ipv4(self):
        """
        After release the other holder of an IPv4 socket still sends and
        receives, and its orderly close delivers its last bytes and a FIN.
        """
        return self.check_release("127.0.0.1")

    def test_release_ipv6(self):
        """The same holds for an IPv6 socket."""
        return self.check_release("::1")

    def test_release_needs_tcp(self):
        """release refuses what is not a Twisted TCP connection instead of guessing."""
        self.assertRaises(TypeError, handoff.release, StringTransport())


class AdoptTests(RealSocketMixin, unittest.TestCase):
    def test_not_a_socket(self):
        """A descriptor that is not a socket is refused, and closed."""
        r, w = os.pipe()
        self.addCleanup(os.close, w)
        self.assertRaises(control.HandoffRefused, handoff.adopt, reactor, r,
                          protocol.Factory.forProtocol(Echo), b"")
        self.assertFdClosed(r)

    def test_unix_socket(self):
        """A Unix-domain socket is refused, and closed."""
        a, b = socket.socketpair()
        self.addCleanup(a.close)
        fd = b.detach()
        self.assertRaises(control.HandoffRefused, handoff.adopt, reactor, fd,
                          protocol.Factory.forProtocol(Echo), b"")
        self.assertFdClosed(fd)

    @defer.inlineCallbacks
    def test_factory_refuses(self):
        """A factory that builds no protocol makes adopt refuse, and the descriptor is closed."""
        parent, client = yield self.connected_pair("127.0.0.1")
        refusing = protocol.Factory()
        refusing.buildProtocol = lambda addr: None
        fd = os.dup(parent.transport.fileno())
        self.assertRaises(control.HandoffRefused, handoff.adopt, reactor, fd, refusing, b"x")
        self.assertFdClosed(fd)
        parent.transport.loseConnection()
        yield client.lost

    @defer.inlineCallbacks
    def test_replay_error_closes(self):
        """A protocol that raises on the replayed head is closed and the error logged."""
        class Broken(Echo):
            def dataReceived(self, data):
                raise ValueError("bad head")

        parent, client = yield self.connected_pair("127.0.0.1")
        broken = handoff.adopt(reactor, os.dup(parent.transport.fileno()),
                               protocol.Factory.forProtocol(Broken), b"head")
        handoff.release(parent.transport)
        yield broken.lost.addTimeout(10, reactor)
        yield client.lost.addTimeout(10, reactor)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)

    def assertFdClosed(self, fd: int) -> None:
        e = self.assertRaises(OSError, os.fstat, fd)
        self.assertEqual(e.errno, errno.EBADF)


class ShardSide(amp.AMP):
    """The shard end of the control channel: adopts handed-over sockets with Echo."""

    refuse = False

    def __init__(self):
        super().__init__()
        self.lost = defer.Deferred()
        self.adopted: list[Echo] = []

    @control.Handoff.responder
    def handoff(self, fd, head, peer, tls):
        if self.refuse:
            os.close(fd)
            raise control.HandoffRefused("full")
        self.peer = peer
        self.adopted.append(handoff.adopt(reactor, fd, protocol.Factory.forProtocol(Echo), head))
        return {"connections": len(self.adopted)}

    def connectionLost(self, reason):
        super().connectionLost(reason)
        self.lost.callback(None)


class ParentSide(amp.AMP):
    def __init__(self):
        super().__init__()
        self.lost = defer.Deferred()

    def connectionLost(self, reason):
        super().connectionLost(reason)
        self.lost.callback(None)


class Dispatching(Collector):
    """A minimal parent: read up to the end of the head, then hand the socket over."""

    channel: ParentSide
    sent_fds: list[int]

    def dataReceived(self, data):
        self.data += data
        if b"\r\n\r\n" not in self.data:
            return
        self.transport.stopReading()

        def call(command, **kw):
            self.sent_fds.append(kw["fd"])
            return self.channel.callRemote(command, **kw)

        peer = self.transport.getPeer()
        self.outcome = handoff.offer(reactor, call, self.transport.fileno(), self.data,
                                     f"{peer.host}:{peer.port}", timeout=10)
        self.outcome.addCallbacks(self.handed, self.refused)

    def handed(self, answer):
        self.answer = answer
        handoff.release(self.transport)

    def refused(self, failure):
        self.failure = failure
        self.transport.write(b"HTTP/1.1 503 Service Unavailable\r\n\r\n")
        self.transport.loseConnection()


class AmpHandoffTests(RealSocketMixin, unittest.TestCase):
    def setUp(self):
        self.parent, self.shard = self.control_channel()

    @defer.inlineCallbacks
    def handed_over(self):
        factory = BuiltFactory(Dispatching)
        factory.buildProtocol = self._with_channel(factory.buildProtocol)
        dispatching, client = yield self.connected_pair("127.0.0.1", factory)
        head = b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n"
        client.transport.write(head + b"EARLY")
        while not hasattr(dispatching, "outcome"):
            yield task.deferLater(reactor, 0.001, lambda: None)
        yield dispatching.outcome.addErrback(lambda f: None)
        return dispatching, client, head

    def _with_channel(self, build):
        def buildProtocol(addr):
            p = build(addr)
            p.channel, p.sent_fds = self.parent, []
            return p
        return buildProtocol

    @defer.inlineCallbacks
    def test_handoff_end_to_end(self):
        """
        A real accepted TCP socket goes over AMP to the shard side, which adopts
        it and replays every byte the parent read, head first; the client then
        talks to the shard, the parent's copy is gone, and the shard's close is
        orderly.
        """
        dispatching, client, head = yield self.handed_over()
        self.assertEqual(dispatching.answer, {"connections": 1})
        yield dispatching.lost.addTimeout(10, reactor)
        echo = self.shard.adopted[0]
        self.assertNoLinger(echo)
        self.assertEqual(echo.chunks[0], head + b"EARLY")
        self.assertEqual(self.shard.peer.split(":")[0], "127.0.0.1")
        yield client.until_endswith(head + b"EARLY")
        yield self.finish_session(client, echo)
        reason = client.reason
        self.assertEqual(client.data, head + b"EARLY" + b"pinglast")
        self.assertTrue(reason.check(error.ConnectionDone), reason)
        self.assertFdClosed(dispatching.sent_fds[0])

    @defer.inlineCallbacks
    def test_handoff_refused(self):
        """A refusal comes back as HandoffRefused; the parent still owns the client and answers it."""
        self.shard.refuse = True
        dispatching, client, _ = yield self.handed_over()
        self.assertTrue(dispatching.failure.check(control.HandoffRefused))
        yield client.lost.addTimeout(10, reactor)
        reason = client.reason
        self.assertEqual(client.data, b"HTTP/1.1 503 Service Unavailable\r\n\r\n")
        self.assertTrue(reason.check(error.ConnectionDone), reason)
        self.assertFdClosed(dispatching.sent_fds[0])
        self.assertEqual(self.shard.adopted, [])

    def assertFdClosed(self, fd: int) -> None:
        e = self.assertRaises(OSError, os.fstat, fd)
        self.assertEqual(e.errno, errno.EBADF)


class OfferTests(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()
        r, w = os.pipe()
        self.addCleanup(os.close, r)
        self.addCleanup(os.close, w)
        self.fd = r
        self.calls: list = []

    def call(self, command, **kw):
        d = defer.Deferred()
        self.calls.append((command, kw, d))
        return d

    def test_answer(self):
        """The shard's answer is passed on, the timer is cancelled and the duplicate closed."""
        d = handoff.offer(self.clock, self.call, self.fd, b"head", "1.2.3.4:5", timeout=5)
        command, kw, pending = self.calls[0]
        self.assertIs(command, control.Handoff)
        self.assertEqual((kw["head"], kw["peer"], kw["tls"]), (b"head", "1.2.3.4:5", False))
        self.assertNotEqual(kw["fd"], self.fd)
        pending.callback({"connections": 3})
        self.assertEqual(self.successResultOf(d), {"connections": 3})
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertRaises(OSError, os.fstat, kw["fd"])

    def test_timeout_keeps_duplicate_until_answer(self):
        """
        After the timeout the offer fails, but the duplicate descriptor stays
        open until the channel answers, so its number cannot be reused while
        AMP may still be sending it.
        """
        d = handoff.offer(self.clock, self.call, self.fd, b"", "p", timeout=5)
        _, kw, pending = self.calls[0]
        self.clock.advance(5)
        self.failureResultOf(d, defer.TimeoutError)
        os.fstat(kw["fd"])
        pending.errback(error.ConnectionLost())
        self.assertRaises(OSError, os.fstat, kw["fd"])

    def test_call_raises(self):
        """A call that raises (shard gone) fails the offer and closes the duplicate."""
        fds = []

        def gone(command, **kw):
            fds.append(kw["fd"])
            raise error.ConnectionLost("no channel")

        d = handoff.offer(self.clock, gone, self.fd, b"", "p", timeout=5)
        self.failureResultOf(d, error.ConnectionLost)
        self.assertRaises(OSError, os.fstat, fds[0])
        self.assertEqual(self.clock.getDelayedCalls(), [])
