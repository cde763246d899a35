"""
The shard's WebSocket transport: one Autobahn server protocol per client,
an adapter between the WebSocket bytes and the client's L{Session}
(odin_ws/shard/clients/session.py, where every client rule lives): the handshake
becomes L{Session.admit} and L{Session.url_subscribe}, a text message
L{Session.message}, and what the session answers becomes frames, close
frames or a refused handshake. Events never pass through here: they go
from the shard's L{odin_ws.shard.delivery.fanout.Fanout} straight to each
connection's L{odin_ws.shard.delivery.outbox.Outbox}.
"""

from __future__ import annotations

import time
from http import HTTPStatus
from typing import Any, Protocol

import txaio
from autobahn.twisted.websocket import WebSocketServerFactory
from autobahn.websocket.types import ConnectionDeny
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure

from odin_ws.common.logs import redact
from odin_ws.common.settings import Settings
from odin_ws.shard.clients import auth, headgate, messages, sse
from odin_ws.shard.clients.autobahn_internals import (
    INVALID_ORIGIN,
    defer_log_arguments,
    server_window,
)
from odin_ws.shard.clients.closecodes import (
    CLOSE_POLICY,
    CLOSE_SLOW_CONSUMER,
    count_closed,
)
from odin_ws.shard.clients.headgate import HeadGate
from odin_ws.shard.clients.lean import LeanServerProtocol, with_settings
from odin_ws.shard.clients.refusal import Refused, bad_origin
from odin_ws.shard.clients.session import Session
from odin_ws.shard.delivery import deflate
from odin_ws.shard.delivery.deflate import Deflate
from odin_ws.shard.delivery.frames import text_frame
from odin_ws.shard.delivery.outbox import Outbox, OutboxHolder
from odin_ws.shard.delivery.pingwheel import NOT_DUE, PingWheel


class WebSocketHost(sse.StreamHost, Protocol):
    """What the WebSocket transport needs of its shard, besides what the session and SSE need."""

    def connection_made(self, proto: Any) -> None: ...

    @property
    def deflate(self) -> Deflate:
        """The shard's compression of event frames (whether it is offered, its variants)."""


# Autobahn's own bases disagree on the types of peer and _transport_details.
class ClientProtocol(OutboxHolder, LeanServerProtocol):  # type: ignore[misc]
    """
    One WebSocket client of a shard (its Outbox closes when it leaves the open state).

    It logs through a logger of Autobahn's kind (txaio's), at C{log.level}
    (L{ClientFactory.reconfigure}): below that level its calls, about
    fifteen debug lines per connection, are no-ops, where a Twisted
    C{Logger} built and filtered an event for each (issue 22).
    """

    log = txaio.make_logger()  # type: ignore[attr-defined]  # bound by use_twisted()

    factory: ClientFactory
    #: Twisted types it Optional; a connection has one from connectionMade on.
    transport: Any
    #: Made in connectionMade, before any other call reads it.
    session: Session
    outbox: Outbox | None
    # In slots like Autobahn's state (odin_ws/shard/clients/lean.py): every
    # connection carries them. OutboxHolder's two attributes included.
    __slots__ = ("outbox", "_ws_state", "adopted_at", "session", "head_gate", "url_subscribe",
                 "deny_body", "ping_due")

    def __init__(self) -> None:
        super().__init__()
        self.adopted_at = 0.0
        self.session = None  # type: ignore[assignment]  # until connectionMade
        self.head_gate: HeadGate | None = None
        #: The subscribe the URL asks for (?channels=...), made at open.
        self.url_subscribe: messages.Subscribe | None = None
        #: The JSON body of a refused handshake (subscribe by URL), if any.
        self.deny_body: bytes | None = None
        #: Where it waits in the shard's keepalive wheel (L{PingWheel}).
        self.ping_due = NOT_DUE

    def connectionMade(self) -> None:
        # Adoption: the parent's head bytes are replayed right after this.
        host = self.factory.host
        self.adopted_at = time.monotonic()
        self.session = Session(host, self, "connection")
        self.head_gate = HeadGate(self.transport, host.settings.listen.max_head_bytes)
        # No Nagle: events are small writes, and a client that delays its
        # ACKs (most do) would otherwise hold each next one up to ~40 ms.
        # Autobahn's connectionMade means to do this but asks before it has
        # copied tcpNoDelay from the factory; its AttributeError is
        # swallowed and the option stays off (Autobahn 26.10).
        try:
            self.transport.setTcpNoDelay(True)
        except (AttributeError, OSError):
            pass    # not a TCP transport
        super().connectionMade()
        host.connection_made(self)

    def dataReceived(self, data: bytes) -> None:
        gate = self.head_gate
        if gate is None:
            return super().dataReceived(data)
        # Until the handshake ends, Autobahn reads only what the parser the
        # parent uses accepted (odin_ws/shard/clients/headgate.py, issue 16).
        data = gate.admit(data)
        head = gate.head
        if head is not None and head.path == self.factory.host.settings.listen.sse_path:
            # An event stream, not a WebSocket: odin_ws/shard/clients/sse.py serves it.
            self.head_gate = None
            sse.take_over(self, self.factory.host, head)
            return
        if head is not None and data:
            refusal = headgate.not_served(head, self.factory.host.settings.listen.ws_path)
            if refusal is not None:
                self.head_gate = None
                gate.refuse(refusal)
                return
        if data:
            super().dataReceived(data)
        if self.state != self.STATE_CONNECTING:
            self.head_gate = None

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        super().connectionLost(reason)
        self.factory.pings.discard(self)
        if self.session is not None:
            self.session.lost()
        self.factory.host.connection_lost(self)

    def onConnect(self, request: Any) -> str | None:
        host = self.factory.host
        if request.path != host.settings.listen.ws_path:
            raise ConnectionDeny(404, "Not Found")
        if not host.accepting:
            raise ConnectionDeny(503, "Service Unavailable")
        session = self.session
        gate = self.head_gate
        if gate is not None and gate.head is not None:
            query = gate.head.query
        else:
            query = {k: v[0] for k, v in request.params.items() if v}
        session.identify(getattr(self.transport.getPeer(), "host", ""), request.headers)
        try:
            session.admit(request.headers, request.params, host.verifier.sources)
            # Subscribe by URL (?channels=..., docs/protocol.md): checked now,
            # so a bad list refuses the upgrade with a JSON body; made at open.
            self.url_subscribe = session.url_subscribe(query) if query else None
        except Refused as e:
            session.refused(e)
            if e.code in messages.ERROR_CODES:
                self.deny_body = e.body()
                raise ConnectionDeny(e.status, HTTPStatus(e.status).phrase) from None
            raise ConnectionDeny(e.status, f"{HTTPStatus(e.status).phrase}: {e.message}") \
                from None
        return auth.subprotocol(request.protocols)

    def failHandshake(self, reason: str, code: int = 400, responseHeaders: Any = None) -> None:
        # Autobahn quotes what it refused (a "bearer.<JWT>" subprotocol
        # offered twice, a header it cannot parse) in the status line it
        # sends and in the reason it logs: never a token (issue 16).
        body, self.deny_body = self.deny_body, None
        session = self.session
        if reason.startswith(INVALID_ORIGIN) and session is not None:
            # Refused by Autobahn before onConnect: counted like the stream's.
            session.identify(getattr(self.transport.getPeer(), "host", ""),
                             getattr(self, "http_headers", None) or {})
            refusal = bad_origin()
            session.refused(refusal)
            reason, code = f"{HTTPStatus(400).phrase}: {refusal.message}", 400
        if body is not None:
            # A refused subscribe by URL: the reason as JSON, like the
            # error message it would have been (docs/protocol.md).
            self.wasNotCleanReason = reason
            self.sendData(b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\n"
                          b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
                          % (code, redact(reason).encode("ascii", "replace"), len(body), body))
            self.dropConnection(abort=False)
            return
        super().failHandshake(redact(reason), code, responseHeaders)

    def ws_extensions_offered(self, extensions: list[Any]) -> list[Any]:
        # RFC 7692, 5: an offer with unknown, repeated or invalid parameters
        # is declined (Autobahn would refuse the handshake): dropped here,
        # counted, and the connection proceeds without it. Other extensions
        # (Autobahn's bzip2 and snappy among them) are never accepted.
        offered = [params for name, params in extensions if name == deflate.EXTENSION]
        kept = [(deflate.EXTENSION, params) for params in offered if deflate.valid_offer(params)]
        if len(kept) < len(offered):
            self.factory.host.deflate.stats.offers["invalid"] += 1
        return kept

    def onOpen(self) -> None:
        self.factory.pings.add(self)
        session = self.session
        outbox = session.open(self.adopted_at, self._slow_consumer)
        bits = server_window(self)
        if bits is not None:
            # Event frames compressed for this window from now on.
            outbox.variant = v = deflate.variant(bits)
            self.factory.host.deflate.opened(v, outbox)
        msg, self.url_subscribe = self.url_subscribe, None
        if msg is not None:
            # Checked at the handshake (onConnect); the ack is the first
            # message after the open.
            session.subscribe(msg)

    def reconfigure(self, settings: Settings) -> None:
        """Reloaded settings reach this connection's session (see L{Session.reconfigure})."""
        if self.session is not None:
            self.session.reconfigure(settings)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        # A message answers a keepalive ping as well as its pong (Autobahn's
        # autoPingRestartOnAnyTraffic, its default).
        self.autoPingPending = None
        session = self.session
        if self.state != self.STATE_OPEN or not session.message_allowed():
            return
        if isBinary:
            session.error(messages.BINARY_NOT_SUPPORTED,
                          "binary frames are not supported; send JSON text", None)
            return
        session.message(payload)

    def onPing(self, payload: bytes) -> None:
        # Control frames are client messages too (issue 23, H4): empty pings
        # at ~40k/s held a shard's reactor and were never refused. Each one
        # spends a token of the message rate; a flood is closed with 1008.
        if self.state == self.STATE_OPEN and self.session.message_allowed():
            super().onPing(payload)

    def onPong(self, payload: bytes) -> None:
        # Autobahn has already matched the answer to its own keepalive ping
        # (one per keepalive.ping_interval, well inside the rate).
        if self.state == self.STATE_OPEN:
            self.session.message_allowed()

    def reply(self, payload: bytes) -> None:
        """
        A reply to the client goes out behind the events already queued for
        it, never ahead (an ack after a replay, a pong after a backlog):
        through the Outbox while frames wait there, else straight to the
        transport, which keeps order behind what Twisted holds. Runs the
        fan-out keeps for the C send loop go first (C{settle}: else a reply
        made before their write overtook them).
        """
        outbox = self.outbox
        if outbox is not None:
            outbox.fanout.settle()
        if outbox is not None and outbox.queue:
            outbox.push_control(text_frame(payload))
        else:
            # Never compressed (docs/protocol.md): Autobahn's compressor
            # would keep zlib's state (~256 KB) on the connection.
            self.sendMessage(payload, doNotCompress=True)

    def close(self, code: int, reason: str) -> None:
        """Start the closing handshake with C{code} (the session's, or the shard's drain)."""
        if code == CLOSE_POLICY:
            # sendClose() refuses 1008 (it allows 1000 and 3000-4999 only);
            # sendCloseFrame is the same closing handshake without that check.
            self.sendCloseFrame(code=code, reasonUtf8=reason.encode("utf-8"), isReply=False)
            # A flooding client is read no more: what it still sends would
            # cost parsing until the close handshake times out (2 s), after
            # which the connection is dropped.
            self.transport.pauseProducing()
        else:
            self.sendClose(code, reason)

    def _slow_consumer(self) -> None:
        self.sendClose(CLOSE_SLOW_CONSUMER, "slow consumer: outbound buffer exceeded")

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        session = self.session
        outbox = self.outbox
        if outbox is None:
            if session is not None:
                session.stop_timers()
            return
        self.outbox = None
        if outbox.variant != deflate.PLAIN:
            self.factory.host.deflate.closed(outbox.variant, outbox)
        session.closed(outbox, self.factory.host.subscriptions)
        by_server = self.closedByMe and self.localCloseCode is not None
        if by_server:
            # We closed first (1007, 1008, 1009, 4008, ...): count our code,
            # not the client's echo, nor the 1006 of a client that never
            # answered our close frame.
            code = self.localCloseCode
        count_closed(code, wasClean, by_server)


class ClientFactory(WebSocketServerFactory):
    """Builds the shard's client protocols, with Autobahn's options from the settings."""

    protocol = ClientProtocol  # type: ignore[assignment]  # Twisted's stubs want a plain Protocol

    def __init__(self, host: WebSocketHost):
        super().__init__()
        self.host = host
        keepalive = host.settings.keepalive
        #: The server pings of every connection, from one timer.
        self.pings = PingWheel(host.reactor, keepalive.ping_interval, keepalive.ping_timeout)
        # Autobahn's log arguments cost nothing until a line is written.
        defer_log_arguments()
        self.reconfigure(host.settings)

    def reconfigure(self, settings: Settings) -> None:
        """Autobahn's options for the connections made from now on, and its log level."""
        ClientProtocol.log.set_log_level(settings.log.level)
        limits, keepalive = settings.limits, settings.keepalive
        self.setProtocolOptions(
            maxFramePayloadSize=limits.max_message_bytes,
            maxMessagePayloadSize=limits.max_message_bytes,
            openHandshakeTimeout=limits.handshake_timeout,
            closeHandshakeTimeout=2,
            # Autobahn's default drops the TCP connection on a protocol
            # violation without a close frame: the client would see 1006,
            # never the 1009/1007/1002 of docs/protocol.md.
            failByDrop=False,
            # The origin rule is the session's (limits.allowed_origins), the
            # same for the event stream: Autobahn would refuse Origin: null
            # (a page opened from a file) with a 400 nobody counted.
            allowNullOrigin=True,
            # No status page (it names Autobahn's version) nor its ?redirect=
            # for a head without Upgrade; the head gate answers those first.
            webStatus=False,
            # Pings come from the shard's wheel (self.pings), not a timer
            # per connection.
            autoPingInterval=0,
            autoPingTimeout=0,
            tcpNoDelay=True,
            perMessageCompressionAccept=self._accept_compression,
        )
        self.pings.reconfigure(keepalive.ping_interval, keepalive.ping_timeout)
        # Read by each connection from its class, not copied onto it (lean.py).
        self.protocol = with_settings(ClientProtocol, self)  # type: ignore[assignment]

    def _accept_compression(self, offers: list[Any]) -> deflate.ServerAccept | None:
        """The permessage-deflate offer accepted, if compression is on (counted either way)."""
        host = self.host
        answer = deflate.accept(offers) if host.deflate.enabled else None
        host.deflate.stats.offers["accepted" if answer is not None else "declined"] += 1
        return answer
