"""
The memory footprint of one WebSocket connection: a lean base for the
shard's server protocol, built on the Autobahn internals that
L{odin_ws.shard.clients.autobahn_internals} names; guarded by
C{tests/shard/clients/test_memory.py} and C{tests/shard/clients/test_autobahn_internals.py}.

An idle connection of a shard costs mostly Python objects, and Autobahn's
server protocol was the largest of them: about a hundred instance
attributes (its settings copied from the factory, its state machine, the
request it answered) in a C{__dict__} of ~3.3 KB.

L{LeanServerProtocol} keeps Autobahn's behaviour and trims that:

  - Autobahn copies its factory's settings (C{CONFIG_ATTRS}, 29 of them)
    onto each connection, unless the connection already has them: the
    factory makes a protocol class of its own settings (L{with_settings}:
    class attributes, read by every connection of that class), so nothing
    is copied, and a change of settings makes a new class for the
    connections made from then on (as the copy did);
  - Autobahn's futures C{is_open} and C{is_closed} (two Deferreds) are only
    resolved on the server side, never observed (odinws uses
    L{ProtocolHooks}' hooks): one inert object stands for both (L{UNOBSERVED});
  - every other attribute Autobahn's server protocol sets lives in a slot (8
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

from odin_ws.shard.clients.autobahn_internals import (
    CONFIG_ATTRS,
    HANDSHAKE_ATTRS,
    STATE_ATTRS,
    ProtocolHooks,
    forget_transport_details,
)

# send_queue until a chopped or synchronous write needs a real queue: empty,
# like the deque Autobahn checks with len() before every write.
_NO_QUEUE: tuple = ()


class Unobserved:
    """
    What a connection's C{is_open} and C{is_closed} are: Autobahn resolves
    them (C{txaio.resolve}, C{reject}), nobody on odinws's server side waits
    on them; waiting on one is refused rather than never fired.
    """

    __slots__ = ()
    called = False

    def callback(self, result: object) -> None:
        pass

    def errback(self, failure: object = None) -> None:
        pass

    def __getattr__(self, name: str) -> Any:
        raise AttributeError(f"{name}: a server connection's is_open / is_closed are not "
                             "observable in odinws (odin_ws/shard/clients/lean.py)")


#: The one L{Unobserved} of every connection.
UNOBSERVED = Unobserved()


def with_settings(cls: type[LeanServerProtocol], factory: Any) -> type[LeanServerProtocol]:
    """
    A subclass of C{cls} with C{factory}'s Autobahn settings as class
    attributes: Autobahn finds them on each connection and copies nothing.
    """
    settings = {name: getattr(factory, name) for name in CONFIG_ATTRS}
    return type(cls.__name__, (cls,), {"__slots__": (), "__module__": cls.__module__,
                                       "__qualname__": cls.__qualname__, **settings})


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


class LeanServerProtocol(ProtocolHooks):
    """
    Autobahn's Twisted server protocol with its per-connection state in
    slots (see the module). Subclasses may add slots of their own; their
    shadowed class attributes become instance defaults the same way.
    """

    __slots__ = tuple(dict.fromkeys((*STATE_ATTRS, *HANDSHAKE_ATTRS)))

    _slot_defaults: dict[str, Any] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._slot_defaults = class_defaults(cls)

    def __init__(self) -> None:
        for name, value in self._slot_defaults.items():
            setattr(self, name, value)
        super().__init__()
        self.is_open = self.is_closed = UNOBSERVED

    def ws_connection_made(self) -> None:
        self.send_queue = _NO_QUEUE  # type: ignore[assignment]  # a deque only when chopped

    def sendData(self, data: bytes, sync: bool = False, chopsize: int | None = None) -> None:
        if (sync or chopsize) and self.send_queue is _NO_QUEUE:
            self.send_queue = deque()
        super().sendData(data, sync, chopsize)

    def ws_opening(self) -> None:
        for name in HANDSHAKE_ATTRS:
            if hasattr(self, name):
                delattr(self, name)

    def ws_opened(self) -> None:
        forget_transport_details(self)

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
