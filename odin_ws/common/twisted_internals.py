"""
The one module touching Twisted's private or undocumented internals.
Everything else in odinws goes through the functions here; each names the
internal it relies on. C{tests/common/test_twisted_internals.py} pins the
Twisted version this was written for (L{WRITTEN_FOR}, the pin in
C{requirements.lock}) and checks that every internal named here still
exists with the shape used, so an upgrade fails there, in one place: read
the new Twisted code, adapt this module, then the test.

Internals touched:

  - C{abstract.FileDescriptor}'s write buffer: C{dataBuffer}, C{offset},
    C{_tempDataLen} (L{held}, L{write_state});
  - C{abstract.FileDescriptor.producerPaused}, set by us so that
    C{doWrite} resumes our producer once drained (L{resume_when_drained});
  - C{tcp.Connection}: C{socket}, C{TLS}, C{connected}, C{disconnecting},
    C{_aborting} (L{plain_socket}, L{write_state}); C{FileDescriptor.reactor}
    (L{served_by});
  - C{tcp._SocketCloser._shouldShutdown} (L{release_shared});
  - C{TLSMemoryBIOProtocol._producer}, a C{_ProducerMembrane} whose
    C{_producer} is the application's producer (L{producer_of});
  - the epoll/poll/select reactors' C{_writes}, the set of file
    descriptors registered for writing (L{pending_writers});
  - C{StreamServerEndpointService._raiseSynchronously}
    (L{raise_listen_errors});
  - C{tcp.Connection.protocol} and C{ProtocolWrapper.wrappedProtocol}
    (the TLS wrapper's), reassigned (L{replace_protocol});
  - C{TLSMemoryBIOProtocol._shutdownTLS}, extended (L{PromptCloseTLS});
  - C{TCP4ServerEndpoint._backlog} (TCP6's and UNIX's too), the
    C{backlog=} of an endpoint string (L{endpoint_backlog}).
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet import abstract, tcp
from twisted.protocols.tls import BufferingTLSTransport

#: The Twisted release these internals were read in (C{requirements.lock}).
WRITTEN_FOR = "26.10.0"

#: L{write_state}: Twisted holds bytes the kernel has not taken yet.
HOLDING = 0
#: L{write_state}: nothing held, and a plain TCP connection still open: a
#: C{socket.send} now is what the reactor's C{doWrite} would do.
SENDABLE = 1
#: L{write_state}: nothing held, but only C{transport.write} is right
#: (TLS, closing, aborting, not TCP).
WRITE = 2


def held(transport: Any) -> int:
    """
    Bytes Twisted holds for C{transport} because the kernel has not taken
    them yet. For TLS, the (encrypted) bytes the TCP transport below holds;
    0 for transports with no such buffer (test transports).
    """
    if isinstance(transport, abstract.FileDescriptor):
        return len(transport.dataBuffer) - transport.offset + transport._tempDataLen
    inner = getattr(transport, "transport", None)   # TLSMemoryBIOProtocol and wrappers
    if inner is not None and inner is not transport:
        return held(inner)
    return 0


def has_write_buffer(transport: Any) -> bool:
    """Is C{transport} a C{FileDescriptor}, whose buffer L{write_state} reads?"""
    return isinstance(transport, abstract.FileDescriptor)


def write_state(transport: abstract.FileDescriptor) -> int:
    """
    L{HOLDING}, L{SENDABLE} or L{WRITE} for a transport for which
    L{has_write_buffer} is true. One call on the write path, reading the
    buffer and flags C{transport.write} and C{doWrite} go by.
    """
    if transport._tempDataLen or len(transport.dataBuffer) != transport.offset:
        return HOLDING
    if (isinstance(transport, tcp.Connection) and transport.connected
            and not transport.disconnecting and not transport._aborting
            and not transport.TLS):
        return SENDABLE
    return WRITE


def resume_when_drained(transport: abstract.FileDescriptor) -> None:
    """
    Mark C{transport}'s registered streaming producer paused, so that the
    reactor's C{doWrite} calls its C{resumeProducing} once everything held
    has been sent (below the 64 KiB high-water mark Twisted would not).
    """
    transport.producerPaused = True


def plain_socket(transport: Any) -> socket.socket | None:
    """
    The socket under C{transport} if it is a plain (not TLS) TCP connection,
    to C{send} on directly when L{write_state} says L{SENDABLE}; else None.
    """
    if isinstance(transport, tcp.Connection) and not transport.TLS:
        return transport.socket
    return None


def served_by(transport: Any, reactor: Any) -> bool:
    """Is C{transport} a descriptor of C{reactor} (whose L{pending_writers} tell about it)?"""
    return getattr(transport, "reactor", None) is reactor


def pending_writers(reactor: Any) -> set[int] | None:
    """
    The set of file descriptors C{reactor} (epoll, poll, select) watches for
    writability: Twisted holds bytes for a connection, or is closing it,
    exactly while its descriptor is in there. Read, never modified. None
    for reactors without such a set.
    """
    writes = getattr(reactor, "_writes", None)
    return writes if isinstance(writes, set) else None


def producer_of(transport: Any) -> Any:
    """
    The producer registered on C{transport}: through TLS's membrane for a
    C{TLSMemoryBIOProtocol} (whose own C{.producer} would be the TCP
    transport's, the membrane), C{transport.producer} otherwise.
    """
    membrane = getattr(transport, "_producer", None)
    if membrane is not None:
        return getattr(membrane, "_producer", None)
    return getattr(transport, "producer", None)


def release_shared(transport: tcp.Connection) -> None:
    """
    Make C{transport}'s next close only close our descriptor: no
    C{shutdown(2)}, which would end the connection for every process
    holding the socket. Twisted clears the same switch itself for adopted
    listening ports.
    """
    transport._shouldShutdown = False


def accepting_port(transport: Any) -> Any | None:
    """
    The listening port that accepted C{transport} (C{tcp.Server.server}, a
    C{tcp.Port}, which can C{stopReading}/C{startReading} like any file
    descriptor), or None for a transport that is not an accepted socket.
    """
    port = getattr(transport, "server", None) if isinstance(transport, tcp.Server) else None
    return port if isinstance(port, tcp.Port) else None


def limit_accepts(port: tcp.Port, count: int) -> None:
    """
    Let C{port}'s next accept loop take at most C{count} connections (at
    least one). C{tcp.Port.doRead} accepts up to C{numberAccepts} in a row
    and grows it by 20 after each full loop; it reads the value when a loop
    starts, so this bounds the next loop, not the one running.
    """
    port.numberAccepts = max(1, min(port.numberAccepts, count))


def endpoint_backlog(endpoint: Any) -> int | None:
    """
    The listen backlog a TCP or UNIX server endpoint asks for (C{backlog=}
    of its string, Twisted's 50 without); None for another kind of endpoint
    (systemd's inherited socket, wrappers).
    """
    backlog = getattr(endpoint, "_backlog", None)
    return backlog if isinstance(backlog, int) else None


def raise_listen_errors(service: Any) -> None:
    """
    Have a C{StreamServerEndpointService} raise a failure to listen from
    C{privilegedStartService} (so C{twistd} exits with it) instead of
    logging it and running without the listener.
    """
    service._raiseSynchronously = True


def replace_protocol(transport: Any, old: Any, new: Any) -> None:
    """
    Have the connection under C{transport} deliver to C{new} instead of
    C{old} from now on (its bytes, its loss): C{tcp.Connection.protocol},
    or C{wrappedProtocol} of the TLS wrapper between them. Then call
    C{new.makeConnection(transport)}.

    @raise TypeError: C{transport} does not deliver to C{old}.
    """
    if getattr(transport, "wrappedProtocol", None) is old:
        transport.wrappedProtocol = new
    elif getattr(transport, "protocol", None) is old:
        transport.protocol = new
    else:
        raise TypeError(f"{transport!r} does not deliver to {old!r}")
    new.makeConnection(transport)


class PromptCloseTLS(BufferingTLSTransport):
    """
    Twisted's TLS transport, except that once it has sent its close_notify
    (C{_shutdownTLS}, called when the application's last bytes went into
    TLS) it closes the TCP connection beneath, after its buffer, instead of
    reading on until the peer's close_notify: a client refused inside TLS
    (431, 401, a 1002 close) that keeps sending was read until the handshake
    timeout, 2.6 GiB in 9.8 s (issue 23, M3), where a plain connection
    stops reading at once. TLS 1.3 (RFC 8446, 6.1) lets a closing side
    leave without the peer's close_notify.
    """

    def _shutdownTLS(self) -> None:
        super()._shutdownTLS()  # type: ignore[no-untyped-call]  # Twisted's is untyped
        tcp_transport = self.transport
        if tcp_transport is not None:
            tcp_transport.loseConnection()
