"""
The memory footprint of one WebSocket connection: the one module naming
Autobahn's per-connection attributes; guarded by C{tests/shard/test_memory.py}.

An idle connection of a shard costs mostly Python objects, and Autobahn's
server protocol was the largest of them: about a hundred instance
attributes (its settings copied from the factory, its state machine, the
request it answered) in a C{__dict__} of ~3.3 KB.

L{LeanServerProtocol} keeps Autobahn's behaviour and trims that:

  - every attribute Autobahn's server protocol sets lives in a slot (8
    bytes) instead of a dict entry. A slot shadows a class attribute of the
    same name (Twisted's C{Protocol.connected = 0}, Autobahn's C{peer}, ...),
    so each instance starts with the value the class hierarchy gives it; a
    slot that would shadow a method or a property is refused when the class
    is made;
  - what only the opening handshake reads goes when the connection opens:
    the request, its headers and parameters, the response (Autobahn keeps
    them "for the testsuite"), and the transport details Autobahn builds
    for WAMP (~2 KB). Autobahn's server code reads them in
    C{processHandshake}, C{succeedHandshake} and C{_onOpen} only, odinws in
    C{onConnect} only (through the request object);
  - the queue for chopped and synchronous writes (a C{deque}) is
    made when such a write comes (~0.75 KB); odinws makes none;
  - a frame's unmasker and a message's UTF-8 verdict go when the frame or
    message is complete: the next frame gets a new unmasker, the next text
    message a new verdict.

What is not in a slot still works: it lands in the instance's C{__dict__}.
The tests list what does, so an Autobahn upgrade that adds state shows up
as a failing test rather than as silent growth.
"""

from __future__ import annotations

import types
from collections import deque
from typing import Any

from autobahn.twisted.websocket import WebSocketServerProtocol

#: Set by the opening handshake (server side), dropped when it succeeded.
HANDSHAKE_ATTRS = (
    "http_request_data", "http_status_line", "http_headers", "http_request_uri",
    "http_request_path", "http_request_params", "http_request_host", "http_response_data",
    "websocket_origin", "websocket_protocols", "websocket_extensions", "_wskey",
)

#: Instance attributes of an Autobahn (Twisted) server protocol over a
#: connection's life, besides its settings (C{CONFIG_ATTRS}, copied from the
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

# send_queue until a chopped or synchronous write needs a real queue: empty,
# like the deque Autobahn checks with len() before every write.
_NO_QUEUE: tuple = ()


def class_defaults(cls: type) -> dict[str, Any]:
    """
    For every slot of C{cls} (its own and its bases'): the value the name has
    as a class attribute where a slot shadows it.

    @raise TypeError: if a slot shadows a method, a property or another
        descriptor (the slot would hide it from every instance).
    """
    defaults = {}
    missing = object()
    names = {name for klass in cls.__mro__ for name in klass.__dict__.get("__slots__", ())}
    for name in sorted(names):
        for klass in cls.__mro__:
            value = klass.__dict__.get(name, missing)
            if value is missing or isinstance(value, types.MemberDescriptorType):
                continue
            if hasattr(type(value), "__get__"):
                raise TypeError(f"slot {name!r} of {cls.__name__} would shadow "
                                f"{klass.__name__}.{name}, a {type(value).__name__}")
            defaults[name] = value
            break
    return defaults


class LeanServerProtocol(WebSocketServerProtocol):
    """
    Autobahn's Twisted server protocol with its per-connection state in
    slots (see the module). Subclasses may add slots of their own; their
    shadowed class attributes become instance defaults the same way.
    """

    __slots__ = tuple(dict.fromkeys(
        (*WebSocketServerProtocol.CONFIG_ATTRS, *STATE_ATTRS, *HANDSHAKE_ATTRS)))

    _slot_defaults: dict[str, Any] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._slot_defaults = class_defaults(cls)

    def __init__(self) -> None:
        for name, value in self._slot_defaults.items():
            setattr(self, name, value)
        super().__init__()

    def _connectionMade(self) -> None:
        super()._connectionMade()
        self.send_queue = _NO_QUEUE

    def sendData(self, data: bytes, sync: bool = False, chopsize: int | None = None) -> None:
        if (sync or chopsize) and self.send_queue is _NO_QUEUE:
            self.send_queue = deque()
        super().sendData(data, sync, chopsize)

    def _onOpen(self) -> None:
        # succeedHandshake has answered and set STATE_OPEN; onOpen comes next.
        for name in HANDSHAKE_ATTRS:
            if hasattr(self, name):
                delattr(self, name)
        try:
            super()._onOpen()
        finally:
            self._transport_details = None

    def onFrameEnd(self) -> bool | None:
        result = super().onFrameEnd()
        if self.current_frame is None:
            # The frame is complete (not failed half-way): its unmasker is
            # read only while current_frame is set, and a text message's
            # verdict only until its last frame.
            self.current_frame_masker = None
            if not self.inside_message:
                self.utf8validateLast = None
        return result


LeanServerProtocol._slot_defaults = class_defaults(LeanServerProtocol)
