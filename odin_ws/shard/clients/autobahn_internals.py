"""
The one module naming Autobahn's internals. Everything else in odinws
goes through what is here; C{tests/shard/clients/test_autobahn_internals.py} pins
the Autobahn version this was written for (L{WRITTEN_FOR}, the pin in
C{requirements.lock}) and checks that every internal named here still
exists with the shape used, so an upgrade fails there, in one place: read
the new Autobahn code, adapt this module (and L{odin_ws.shard.clients.lean}), then
the test.

Internals touched:

  - the private steps C{WebSocketProtocol._connectionMade} (sets up the
    per-connection state) and C{WebSocketAdapterProtocol._onOpen} (between
    the handshake's success and C{onOpen}), given public hooks by
    L{ProtocolHooks};
  - the module global C{pformat} of C{autobahn.websocket.protocol}, which
    C{_connectionMade} calls on its ~36 settings for a debug line at every
    connection, written or not (half of a shard's CPU per adopted
    connection, issue 22): L{ProtocolHooks} makes it lazy for that call
    (L{Lazy});
  - the module globals C{hltype} and C{hlval} of
    C{autobahn.websocket.protocol} and C{autobahn.twisted.websocket},
    used there only for the arguments of log lines, about ten per
    connection and each evaluated whether the line is written or not (8%
    of what is left): L{defer_log_arguments} makes them lazy;
  - C{WebSocketProtocol._transport_details} (L{forget_transport_details});
  - the names of the instance attributes Autobahn's server protocol sets
    (L{STATE_ATTRS}, L{HANDSHAKE_ATTRS}; its settings are the public
    C{CONFIG_ATTRS}), which L{odin_ws.shard.clients.lean} puts in slots;
  - C{send_queue}, C{current_frame}, C{current_frame_masker},
    C{inside_message}, C{utf8validateLast}: frame and write state
    L{odin_ws.shard.clients.lean} drops while unused;
  - C{WebSocketProtocol.state}, assigned directly at every transition
    (L{odin_ws.shard.delivery.outbox.OutboxHolder} intercepts the assignment);
  - C{closedByMe}, C{localCloseCode} and C{sendCloseFrame} (the close
    handshake without C{sendClose}'s code check), read and called by
    L{odin_ws.shard.clients.websocket.ClientProtocol};
  - the reason C{processHandshake} gives C{failHandshake} for an C{Origin}
    it cannot parse (L{INVALID_ORIGIN}): it refuses it before C{onConnect},
    so the refusal is recognised by it to be counted;
  - C{WebSocketProtocol._parseExtensionsHeader}, given a public hook by
    L{ProtocolHooks} (C{ws_extensions_offered}): Autobahn fails the
    handshake for a compression offer it cannot parse, where RFC 7692
    wants it declined;
  - C{_perMessageCompress} and its C{server_max_window_bits}, the
    compression a connection negotiated (L{server_window}), and its
    C{_decompressor}, dropped after each message (L{InflaterPerMessage}).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pprint import pformat
from typing import Any

from autobahn.twisted import websocket as autobahn_twisted
from autobahn.twisted.websocket import WebSocketServerProtocol
from autobahn.util import hltype, hlval
from autobahn.websocket import protocol as autobahn_protocol
from autobahn.websocket.compress_deflate import PerMessageDeflate

#: The Autobahn release these internals were read in (C{requirements.lock}).
WRITTEN_FOR = "26.10.2"

#: How the reason of Autobahn's refusal of an unparsable C{Origin} begins.
INVALID_ORIGIN = "HTTP Origin header invalid"

#: Autobahn's per-connection copies of its factory's settings.
CONFIG_ATTRS: tuple[str, ...] = tuple(WebSocketServerProtocol.CONFIG_ATTRS)

#: Set by the opening handshake (server side), unused once it succeeded.
HANDSHAKE_ATTRS = (
    "http_request_data", "http_status_line", "http_headers", "http_request_uri",
    "http_request_path", "http_request_params", "http_request_host", "http_response_data",
    "websocket_origin", "websocket_protocols", "websocket_extensions", "_wskey",
)

#: Instance attributes of an Autobahn (Twisted) server protocol over a
#: connection's life, besides its settings (L{CONFIG_ATTRS}, copied from the
#: factory) and the handshake's.
STATE_ATTRS = (
    # twisted.internet.protocol.Protocol
    "factory", "transport", "connected",
    # autobahn.util.ObservableMixin, WebSocketProtocol.__init__
    "is_closed", "is_open", "_valid_events", "_results", "_transport_details", "peer",
    # WebSocketProtocol._connectionMade
    "_perMessageCompress", "trackedTimings", "trafficStats", "send_state", "data",
    "send_queue", "triggered", "utf8validator", "wasMaxFramePayloadSizeExceeded",
    "wasMaxMessagePayloadSizeExceeded", "closedByMe", "failedByMe", "droppedByMe",
    "wasClean", "wasNotCleanReason", "wasServerConnectionDropTimeout",
    "wasOpenHandshakeTimeout", "wasCloseHandshakeTimeout", "wasServingFlashSocketPolicyFile",
    "localCloseCode", "localCloseReason", "remoteCloseCode", "remoteCloseReason",
    "openHandshakeTimeoutCall", "closeHandshakeTimeoutCall", "autoPingTimeoutCall",
    "autoPingPending", "autoPingPendingCall", "autoPingPendingSent", "autoPingPendingSeq",
    # handshake results kept while open
    "websocket_version", "websocket_protocol_in_use", "websocket_extensions_in_use",
    # frames and messages
    "inside_message", "current_frame", "current_frame_masker", "control_frame_data",
    "frame_length", "frame_data", "message_data", "message_data_total_length",
    "message_is_binary", "_isMessageCompressed", "utf8validateIncomingCurrentMessage",
    "utf8validateLast",
)


class Lazy(functools.partial):
    """
    C{func(*args, **kwargs)}, made only when a log observer formats it: the
    argument of a log line that Autobahn evaluates before its logger knows
    whether the line is written (below C{log.level} it never is). A
    C{partial}, so making one runs no Python code.
    """

    __slots__ = ()

    def __str__(self) -> str:
        return str(self())

    def __format__(self, spec: str) -> str:
        return format(str(self()), spec)

    __repr__ = __str__


def lazy(func: Callable[..., Any]) -> Callable[..., Lazy]:
    """C{func} made lazy: it returns a L{Lazy} of its call (C{__wrapped__}: C{func})."""
    call = functools.partial(Lazy, func)
    call.__wrapped__ = func  # type: ignore[attr-defined]
    return call


_lazy_pformat = lazy(pformat)
#: The Autobahn modules whose hltype and hlval only make log arguments.
_HIGHLIGHTING = (autobahn_protocol, autobahn_twisted)


def defer_log_arguments() -> None:
    """
    Make C{hltype} and C{hlval} lazy in the Autobahn modules that use them
    only for log arguments (L{_HIGHLIGHTING}); idempotent, for the process.
    """
    for module in _HIGHLIGHTING:
        for name, func in (("hltype", hltype), ("hlval", hlval)):
            if getattr(module, name) is func:
                setattr(module, name, lazy(func))


class ProtocolHooks(WebSocketServerProtocol):
    """
    Autobahn's Twisted server protocol with public hooks around two of its
    private steps. Subclasses override the hooks, never the steps.
    """

    def _connectionMade(self) -> None:
        # Autobahn formats its settings for a debug line before it knows
        # whether the line is written; the reactor runs one connect at a time.
        autobahn_protocol.pformat = _lazy_pformat  # type: ignore[assignment]
        try:
            super()._connectionMade()
        finally:
            autobahn_protocol.pformat = pformat
        self.ws_connection_made()

    def _onOpen(self) -> None:
        self.ws_opening()
        try:
            super()._onOpen()
        finally:
            self.ws_opened()

    def _parseExtensionsHeader(self, header: str, removeQuotes: bool = True) -> list[Any]:
        return self.ws_extensions_offered(super()._parseExtensionsHeader(header, removeQuotes))

    def ws_extensions_offered(self, extensions: list[Any]) -> list[Any]:
        """
        The handshake's C{Sec-WebSocket-Extensions}, parsed: C{[(name, {param:
        [values]}), ...]}; what this returns is what Autobahn negotiates from.
        """
        return extensions

    def ws_connection_made(self) -> None:
        """Autobahn has just set up the connection's WebSocket state (C{send_queue}, ...)."""

    def ws_opening(self) -> None:
        """The handshake succeeded (answered, C{STATE_OPEN}); C{onOpen} comes next."""

    def ws_opened(self) -> None:
        """C{onOpen} has run (or raised)."""


def forget_transport_details(protocol: WebSocketServerProtocol) -> None:
    """
    Drop the transport details Autobahn builds at connect for WAMP and
    reads last when the connection opens (its C{transport_details}
    property then answers None).
    """
    protocol._transport_details = None  # type: ignore[assignment]  # Autobahn types it set


def retire_unopened(protocol: WebSocketServerProtocol) -> None:
    """
    A protocol whose connection another protocol takes over before any
    handshake (odin_ws/shard/clients/sse.py): cancel the one timer Autobahn arms
    at connect (C{openHandshakeTimeoutCall}), which would otherwise drop
    the connection it no longer serves.
    """
    call = protocol.openHandshakeTimeoutCall
    protocol.openHandshakeTimeoutCall = None
    if call is not None:
        call.cancel()


class InflaterPerMessage(PerMessageDeflate):
    """
    Autobahn's permessage-deflate, dropping its inflater once a message is
    read when the client takes no context over (the server asks it not
    to): Autobahn keeps it for the connection's life, ~40 KB of zlib state
    on every connection whose client ever sent a compressed message.
    """

    def end_decompress_message(self) -> None:
        super().end_decompress_message()
        if self.client_no_context_takeover:
            self._decompressor = None


def server_window(protocol: WebSocketServerProtocol) -> int | None:
    """
    The server window (bits) of the permessage-deflate the connection of
    C{protocol} negotiated in its handshake; None if it negotiated none.
    Its inflater lives for one message at a time from then on
    (L{InflaterPerMessage}).
    """
    pmce = protocol._perMessageCompress
    if isinstance(pmce, PerMessageDeflate):
        if type(pmce) is PerMessageDeflate:
            pmce.__class__ = InflaterPerMessage
        return int(pmce.server_max_window_bits)
    return None
