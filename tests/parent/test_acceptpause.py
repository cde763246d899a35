"""
Tests for L{odin_ws.parent.acceptpause}: a real listening port on the real
reactor and real client sockets, since what is paused is the kernel's
accept.
"""

from __future__ import annotations

import socket

from twisted.internet import defer
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import TestCase

from odin_ws.parent.acceptpause import AcceptPause
from tests.helpers import sample


class AcceptPauseTests(TestCase):
    def setUp(self):
        from twisted.internet import reactor
        self.reactor = reactor
        self.cap = 2
        self.held: list[Protocol] = []
        self.accepted = 0
        self.pause = AcceptPause(reactor, lambda: self.cap - len(self.held))
        test = self

        class Held(Protocol):
            def connectionMade(self):
                test.accepted += 1
                test.held.append(self)
                test.pause.held(self.transport)

            def connectionLost(self, reason=None):
                if self in test.held:
                    test.held.remove(self)

        self.port = reactor.listenTCP(0, Factory.forProtocol(Held), interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)

    @defer.inlineCallbacks
    def warm_up(self):
        """
        One connection taken and let go of: the pause knows its port from the
        first connection on, so only later accept loops are bounded.
        """
        self.connect(1)
        yield poll(self.reactor, lambda: self.accepted == 1)
        self.release_one()
        self.accepted = 0

    def connect(self, count: int) -> None:
        for _ in range(count):
            client = socket.create_connection(("127.0.0.1", self.port.getHost().port))
            self.addCleanup(client.close)

    def release_one(self) -> None:
        """The oldest held connection leaves (handed over, in the dispatcher)."""
        proto = self.held.pop(0)
        proto.transport.abortConnection()
        self.pause.released()

    def listening(self) -> bool:
        return self.port in self.reactor.getReaders()

    @defer.inlineCallbacks
    def test_stops_at_the_cap_and_resumes_on_release(self):
        """
        With room for two, five connections at once: two are accepted and
        the port stops reading (odinws_accept_paused 1, one pause counted),
        so the other three stay in the kernel's backlog, neither accepted
        nor refused; each release lets exactly one more in (the accept loop
        is bounded by the room), until all five were taken.
        """
        yield self.warm_up()
        pauses = sample("odinws_accept_pauses_total")
        self.connect(5)
        yield poll(self.reactor, lambda: self.accepted == 2)
        self.assertFalse(self.listening())
        self.assertTrue(self.pause.paused)
        self.assertEqual(sample("odinws_accept_paused"), 1)
        self.assertEqual(sample("odinws_accept_pauses_total"), pauses + 1)
        for taken in (3, 4, 5):
            self.release_one()
            self.assertTrue(self.listening())
            yield poll(self.reactor, lambda n=taken: self.accepted == n)
            self.assertEqual(self.accepted, taken)
            self.assertFalse(self.listening(), "paused again at the cap")
        self.release_one()
        self.assertTrue(self.listening())
        self.assertFalse(self.pause.paused)
        self.assertEqual(sample("odinws_accept_paused"), 0)

    @defer.inlineCallbacks
    def test_closed_port_not_restarted(self):
        """A release after the listener was closed (the node stops) does not read it again."""
        yield self.warm_up()
        self.connect(3)
        yield poll(self.reactor, lambda: self.accepted == 2)
        yield self.port.stopListening()
        self.release_one()
        self.assertFalse(self.listening())
        self.assertFalse(self.pause.paused)


def later(reactor) -> defer.Deferred:
    """One short turn of the reactor."""
    d: defer.Deferred = defer.Deferred()
    reactor.callLater(0.01, d.callback, None)
    return d


@defer.inlineCallbacks
def poll(reactor, predicate, timeout: float = 10.0):
    """Let the reactor run until C{predicate()} is true (at most C{timeout} seconds)."""
    deadline = reactor.seconds() + timeout
    while not predicate():
        if reactor.seconds() > deadline:
            raise AssertionError("condition not met in time")
        yield later(reactor)
