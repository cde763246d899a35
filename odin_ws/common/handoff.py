"""
Moving a client socket from the parent to a shard: the one module that
touches socket ownership (Twisted's internals through
L{odin_ws.common.twisted_internals}).

Parent side: L{offer} sends the descriptor and the bytes already read with
L{odin_ws.common.commands.Handoff}; once the shard answered, L{release} drops the
parent's copy without disturbing the shard's. A handoff the shard has not
answered in time may still be adopted later, so the parent never writes to
that socket again: it only drops its copy (L{not_adopted} tells when a
failure leaves the socket with the parent alone). Shard side: L{adopt} wraps the
received descriptor in a transport of the shard's reactor and replays the
bytes the parent read.

Why not C{loseConnection()} or C{abortConnection()} in the parent: both act
on the socket, which the two processes share, not just on the parent's
descriptor. C{loseConnection()} ends in C{shutdown(2)}, which ends the
connection for the shard too; C{abortConnection()} sets C{SO_LINGER(1, 0)},
so the shard's eventual close would send RST and lose its last bytes (see
C{_SocketCloser._closeSocket} in C{twisted/internet/tcp.py}). Twisted has a
switch for "this socket is shared, only close it", which it flips itself
for adopted listening ports; L{release} flips it with
L{twisted_internals.release_shared}.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, tcp
from twisted.internet.interfaces import IAddress, IProtocol, IProtocolFactory
from twisted.logger import Logger
from twisted.python.failure import Failure

from odin_ws.common import commands, twisted_internals

log = Logger()

_FAMILIES = (socket.AF_INET, socket.AF_INET6)


def release(transport: Any) -> None:
    """
    Drop the parent's copy of a connection a shard has adopted, leaving the
    connection itself (and the shard's copy) untouched: no shutdown, no
    linger, no byte read or written. The transport's protocol then gets
    C{connectionLost} as usual.

    @raise TypeError: if C{transport} is not a Twisted TCP connection.
    """
    if not isinstance(transport, tcp.Connection):
        raise TypeError(f"cannot release {transport!r}: not a TCP connection")
    transport.stopReading()
    # Close only our descriptor: the socket is shared with the shard now.
    twisted_internals.release_shared(transport)
    transport.loseConnection()


class NotSent(Exception):
    """
    A handoff failed before it left the parent (the shard was not running,
    its channel was already closed, the descriptor could not be duplicated):
    the shard cannot hold the socket.
    """


def not_adopted(failure: Failure) -> bool:
    """
    Whether a failed handoff certainly left the socket with the parent
    alone (L{NotSent}, or the shard's L{commands.HandoffRefused}), so the
    parent may still answer the client. Any other failure (the channel lost
    after sending) leaves it unknown: the shard may have adopted the socket
    and written to it.
    """
    return failure.check(commands.HandoffRefused, NotSent) is not None


def offer(reactor: Any, call: Callable[..., Any], fd: int, head: bytes, peer: str,
          timeout: float, tls: bool = False,
          on_timeout: Callable[[], None] = lambda: None) -> defer.Deferred[Any]:
    """
    Send a L{commands.Handoff} of descriptor C{fd} through C{call} (a shard
    handle's C{call(command, **kwargs)} or an AMP C{callRemote}).

    A duplicate of C{fd} is what goes out, and it stays open until the call
    completes, however late: AMP queues the descriptor by number and sends
    it later, so closing it early could let the number be reused by another
    client's socket and hand that one over.

    @param on_timeout: called once when the call has not completed after
        C{timeout} seconds. The call goes on (the shard may still adopt the
        socket); the returned Deferred fires when it completes.
    @return: a Deferred firing, when the call completes, with the answer
        (C{{"connections": n}}), or failing with L{commands.HandoffRefused},
        L{NotSent}, or the channel's error (see L{not_adopted}).
    """
    dup = os.dup(fd)
    timer = reactor.callLater(timeout, on_timeout)
    returned = False

    def completed(outcome: Any) -> Any:
        os.close(dup)
        if timer.active():
            timer.cancel()
        if (isinstance(outcome, Failure) and not returned
                and not outcome.check(commands.HandoffRefused)):
            # Failed before call() even returned: nothing was sent.
            return Failure(NotSent(outcome.getErrorMessage()))
        return outcome

    result = defer.maybeDeferred(call, commands.Handoff, fd=dup, head=head, peer=peer,
                                 tls=tls).addBoth(completed)
    returned = True
    return result


def _kind_of(fd: int) -> tuple[int, int]:
    """Address family and socket type of C{fd}, read through a duplicate."""
    dup = os.dup(fd)
    try:
        probe = socket.socket(fileno=dup)
    except OSError:
        os.close(dup)
        raise
    with probe:
        return probe.family, probe.type


def _close(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


class _Capture:
    """Wraps a factory to catch the protocol the reactor builds for an adopted socket."""

    def __init__(self, factory: IProtocolFactory):
        self.factory = factory
        self.protocol: IProtocol | None = None

    def buildProtocol(self, addr: IAddress) -> IProtocol | None:
        self.protocol = self.factory.buildProtocol(addr)
        return self.protocol


def adopt(reactor: Any, fd: int, factory: IProtocolFactory, head: bytes) -> IProtocol:
    """
    Serve a connected TCP socket received from the parent with C{factory}'s
    protocol in C{reactor}, then replay C{head} (the bytes the parent read)
    into it before any new byte is read. C{fd} is always closed (the
    reactor keeps its own duplicate).

    @raise commands.HandoffRefused: if C{fd} is not a connected IPv4/IPv6
        stream socket or the factory builds no protocol.
    """
    capture = _Capture(factory)
    try:
        family, kind = _kind_of(fd)
        if family not in _FAMILIES or kind != socket.SOCK_STREAM:
            raise commands.HandoffRefused(f"not a TCP socket (family {family!r})")
        reactor.adoptStreamConnection(fd, family, capture)
    except commands.HandoffRefused:
        raise
    except Exception as e:
        raise commands.HandoffRefused(f"cannot adopt the connection: {e}") from e
    finally:
        _close(fd)
    protocol = capture.protocol
    if protocol is None:
        raise commands.HandoffRefused("the factory refused the connection")
    if head:
        try:
            protocol.dataReceived(head)
        except Exception:
            # The shard owns the connection now; treat it like Twisted treats a
            # protocol that raises in dataReceived: log it and close.
            log.failure("replaying the request head failed")
            # IProtocol does not declare transport; makeConnection has set it.
            protocol.transport.loseConnection()  # type: ignore[attr-defined]
    return protocol
