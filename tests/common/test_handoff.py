"""
Tests for L{odin_ws.common.handoff}: real TCP sockets and real descriptor passing
over AMP on a Unix socketpair, in one process and one real reactor.
"""

from __future__ import annotations

import errno
import os
import socket
from typing import cast

from twisted.internet import defer, error, protocol, reactor, task
from twisted.internet.testing import StringTransport
from twisted.trial import unittest

from odin_ws.common import commands as control
from odin_ws.common import handoff
from tests.helpers import BuiltFactory, Collector, Echo, ParentSide, RealSocketMixin


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
        self.assertEqual(cast(Echo, echo).chunks[0], b"HEAD:")
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
        At the timeout on_timeout is called but the offer goes on: the
        duplicate descriptor stays open, and the offer fires only when the
        channel completes the call, so its number cannot be reused while AMP
        may still be sending it and the caller learns how it ended.
        """
        timeouts = []
        d = handoff.offer(self.clock, self.call, self.fd, b"", "p", timeout=5,
                          on_timeout=lambda: timeouts.append(self.clock.seconds()))
        _, kw, pending = self.calls[0]
        self.clock.advance(5)
        self.assertEqual(timeouts, [5])
        self.assertNoResult(d)
        os.fstat(kw["fd"])
        pending.errback(error.ConnectionLost())
        failure = self.failureResultOf(d, error.ConnectionLost)
        self.assertFalse(handoff.not_adopted(failure), "sent: the shard may have it")
        self.assertRaises(OSError, os.fstat, kw["fd"])

    def test_late_answer_passed_on(self):
        """An answer after the timeout is passed on; on_timeout was called once."""
        timeouts = []
        d = handoff.offer(self.clock, self.call, self.fd, b"", "p", timeout=5,
                          on_timeout=lambda: timeouts.append(1))
        self.clock.advance(60)
        self.calls[0][2].callback({"connections": 1})
        self.assertEqual((self.successResultOf(d), timeouts), ({"connections": 1}, [1]))

    def test_refused_not_adopted(self):
        """A refusal by the shard leaves the socket with the parent alone; the timer is cancelled."""
        d = handoff.offer(self.clock, self.call, self.fd, b"", "p", timeout=5)
        self.calls[0][2].errback(control.HandoffRefused("full"))
        self.assertTrue(handoff.not_adopted(self.failureResultOf(d, control.HandoffRefused)))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_call_raises(self):
        """
        A call that raises or fails before it returns (shard gone, channel
        closed) fails the offer with NotSent, which leaves the socket with the
        parent alone, and closes the duplicate.
        """
        fds = []

        def gone(command, **kw):
            fds.append(kw["fd"])
            raise error.ConnectionLost("no channel")

        def closed(command, **kw):
            fds.append(kw["fd"])
            return defer.fail(error.ConnectionLost("channel closed"))

        for call in (gone, closed):
            d = handoff.offer(self.clock, call, self.fd, b"", "p", timeout=5)
            self.assertTrue(handoff.not_adopted(self.failureResultOf(d, handoff.NotSent)))
            self.assertRaises(OSError, os.fstat, fds[-1])
        self.assertEqual(self.clock.getDelayedCalls(), [])
