"""
Guards for L{odin_ws.shard.clients.autobahn_internals}, the one module naming
Autobahn's internals: the pinned Autobahn version, and each internal it
names (and L{odin_ws.shard.clients.lean} and the shard build on) with the shape
relied on. When one of these fails after an upgrade, do not patch the test:
read the new Autobahn code, adapt odin_ws/shard/clients/autobahn_internals.py and
odin_ws/shard/clients/lean.py, then the test.
"""

from __future__ import annotations

import inspect
import pprint
import re
import socket

from autobahn import util as autobahn_util
from autobahn.twisted.websocket import WebSocketAdapterProtocol, WebSocketServerProtocol
from autobahn.websocket import protocol as autobahn_protocol
from autobahn.websocket.protocol import WebSocketProtocol
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from odin_ws.shard.clients import autobahn_internals
from odin_ws.shard.clients.autobahn_internals import (
    CONFIG_ATTRS,
    HANDSHAKE_ATTRS,
    STATE_ATTRS,
    Lazy,
    ProtocolHooks,
    forget_transport_details,
    server_window,
)
from odin_ws.shard.clients.lean import LeanServerProtocol, with_settings
from odin_ws.shard.clients.websocket import ClientProtocol
from odin_ws.shard.delivery.fanout import Fanout
from odin_ws.shard.delivery.outbox import Outbox, OutboxHolder
from odin_ws.shard.delivery.writestats import WriteStats
from tests.helpers import handshaken_protocol, parse_frames, tcp_pair
from tests.helpers.pins import assert_written_for

#: Where Autobahn's server code reads the state LeanServerProtocol drops,
#: and the condition each reader runs under (see odin_ws/shard/clients/lean.py).
READERS = {
    # handshake: processHandshake and succeedHandshake, both before _onOpen
    **{name: {"WebSocketServerProtocol.processHandshake"} for name in HANDSHAKE_ATTRS},
    "websocket_protocols": {"WebSocketServerProtocol.processHandshake",
                            "WebSocketServerProtocol.succeedHandshake"},
    "websocket_extensions": {"WebSocketServerProtocol.processHandshake",
                             "WebSocketServerProtocol.succeedHandshake"},
    "_wskey": {"WebSocketServerProtocol.processHandshake",
               "WebSocketServerProtocol.succeedHandshake"},
    "http_response_data": {"WebSocketServerProtocol.succeedHandshake"},
    # set at connect, read by _onOpen (before it is dropped) and the property
    "_transport_details": {"WebSocketProtocol.__init__", "WebSocketProtocol.transport_details",
                           "WebSocketAdapterProtocol.connectionMade",
                           "WebSocketAdapterProtocol._onOpen"},
    # writes go through sendData, which makes the queue when one is needed
    "send_queue": {"WebSocketProtocol._connectionMade", "WebSocketProtocol._send",
                   "WebSocketProtocol.sendData"},
    # inside a frame only (processData's "current_frame is not None" branch)
    "current_frame_masker": {"WebSocketProtocol.processData"},
    # set at a text message's first frame, read until its last
    "utf8validateLast": {"WebSocketProtocol.onFrameBegin", "WebSocketProtocol.onFrameData",
                         "WebSocketProtocol.onFrameEnd"},
}



class PinnedVersionTests(SynchronousTestCase):
    def test_installed_is_the_pinned_version(self):
        """
        The Autobahn installed is the one requirements.lock pins and
        autobahn_internals was written for.
        """
        assert_written_for(self, autobahn_internals.WRITTEN_FOR, "autobahn",
                           "odin_ws/shard/clients/autobahn_internals.py")


class Recording(ProtocolHooks):
    """Records the hooks in the order Autobahn's private steps call them."""

    def __init__(self):
        super().__init__()
        self.seen: list[str] = []

    def ws_connection_made(self):
        self.seen.append(f"made:{type(self.send_queue).__name__}")

    def ws_opening(self):
        self.seen.append(f"opening:{self.state == self.STATE_OPEN}")

    def onOpen(self):
        self.seen.append("onOpen")

    def ws_opened(self):
        self.seen.append(f"opened:{self.transport_details is not None}")


class HookTests(SynchronousTestCase):
    """The private steps ProtocolHooks wraps still exist and run where it says."""

    def test_private_steps_exist(self):
        """_connectionMade (WebSocketProtocol) and _onOpen (the Twisted adapter) are there."""
        self.assertTrue(callable(WebSocketProtocol._connectionMade))
        self.assertIn("_onOpen", vars(WebSocketAdapterProtocol))
        self.assertIn("self._connectionMade()", inspect.getsource(
            WebSocketAdapterProtocol.connectionMade))

    def test_extensions_parsed_where_hooked(self):
        """
        processHandshake parses Sec-WebSocket-Extensions with
        _parseExtensionsHeader into [(name, {param: [values]})], negotiates
        from what it returns, and keeps the compression negotiated in
        _perMessageCompress in succeedHandshake (its server_max_window_bits:
        server_window).
        """
        self.assertIn("self._parseExtensionsHeader(", inspect.getsource(
            WebSocketServerProtocol.processHandshake))
        parsed = WebSocketProtocol._parseExtensionsHeader(
            None, "permessage-deflate; server_max_window_bits=10, x-foo")
        self.assertEqual(parsed, [("permessage-deflate", {"server_max_window_bits": ["10"]}),
                                  ("x-foo", {})])
        self.assertIn("self._perMessageCompress = PMCE[", inspect.getsource(
            WebSocketServerProtocol.succeedHandshake))
        proto, _ = handshaken_protocol(Recording)
        self.assertIsNone(server_window(proto))

    def test_hooks_in_order(self):
        """
        ws_connection_made comes once the connection's WebSocket state is
        set up; ws_opening after the handshake set STATE_OPEN, before
        onOpen; ws_opened after it, transport details still there until
        forgotten.
        """
        proto, _ = handshaken_protocol(Recording)
        self.assertEqual(proto.seen, ["made:deque", "opening:True", "onOpen", "opened:True"])

    def test_settings_formatted_only_when_written(self):
        """
        Autobahn's _connectionMade formats its settings with its module's
        pformat for a debug line; under ProtocolHooks a connect calls no
        pformat (the value is a LazyPformat, formatted only by an observer
        that writes it), and the module's pformat is pprint's again after.
        """
        self.assertIn("pformat(configAttrLog)", inspect.getsource(
            WebSocketProtocol._connectionMade))
        calls: list[object] = []
        self.patch(autobahn_protocol, "pformat", calls.append)
        handshaken_protocol(Recording)
        self.assertEqual(calls, [])
        self.assertIs(autobahn_protocol.pformat, pprint.pformat)
        value = [("maxFramePayloadSize", 0, "ClientFactory")]
        self.assertEqual(f"\n{Lazy(pprint.pformat, value)}",
                         "\n" + pprint.pformat(value))
        self.assertEqual(str(Lazy(pprint.pformat, value)), pprint.pformat(value))

    def test_highlights_only_for_log_lines(self):
        """
        In the two Autobahn modules defer_log_arguments changes, hltype and
        hlval appear only as keyword arguments (of log calls); after it a
        handshake calls neither, and a written line still reads the same.
        """
        for module in autobahn_internals._HIGHLIGHTING:
            for name in ("hltype", "hlval"):
                source = re.sub(rf"\b\w+={name}\(", "", inspect.getsource(module))
                self.assertNotIn(f"{name}(", source, module.__name__)
        autobahn_internals.defer_log_arguments()
        autobahn_internals.defer_log_arguments()   # idempotent: wrapped once
        for module in autobahn_internals._HIGHLIGHTING:
            self.assertIs(module.hltype.__wrapped__, autobahn_util.hltype)
            self.assertIs(module.hlval.__wrapped__, autobahn_util.hlval)
        self.assertEqual(f"{autobahn_protocol.hlval(3)}", autobahn_util.hlval(3))
        self.assertEqual(str(autobahn_protocol.hltype(Recording)),
                         autobahn_util.hltype(Recording))
        calls: list[object] = []
        real = autobahn_util.hl
        self.patch(autobahn_util, "hl", lambda *a, **kw: calls.append(a) or real(*a, **kw))
        handshaken_protocol(Recording)
        self.assertEqual(calls, [])

    def test_forget_transport_details(self):
        """The transport_details property reads _transport_details, which can be dropped."""
        proto, _ = handshaken_protocol()
        self.assertIsNotNone(proto.transport_details)
        self.assertIs(proto.transport_details, proto._transport_details)
        forget_transport_details(proto)
        self.assertIsNone(proto.transport_details)


class AttributeTests(SynchronousTestCase):
    """The attribute names L{odin_ws.shard.clients.lean} puts in slots are Autobahn's."""

    def test_every_autobahn_setting_is_a_class_attribute(self):
        """
        Autobahn copies CONFIG_ATTRS onto each connection that lacks them:
        the class L{with_settings} makes has each, from the factory, and no
        slot or instance entry of its own.
        """
        self.assertEqual(CONFIG_ATTRS, tuple(WebSocketServerProtocol.CONFIG_ATTRS))

        class Factory:
            pass

        factory = Factory()
        for i, name in enumerate(CONFIG_ATTRS):
            setattr(factory, name, i)
        cls = with_settings(ClientProtocol, factory)
        self.assertTrue(issubclass(cls, ClientProtocol))
        self.assertEqual(cls.__slots__, ())
        self.assertEqual([getattr(cls, name) for name in CONFIG_ATTRS],
                         list(range(len(CONFIG_ATTRS))))
        self.assertEqual([n for n in CONFIG_ATTRS if n in LeanServerProtocol.__slots__], [])

    def test_open_connection_sets_only_named_attributes(self):
        """
        A plain Autobahn server protocol, opened, holds no instance
        attribute besides the settings, state and handshake ones named.
        """
        proto, _ = handshaken_protocol()
        # state: OutboxHolder's property in ClientProtocol (its slot _ws_state)
        named = set(CONFIG_ATTRS) | set(STATE_ATTRS) | set(HANDSHAKE_ATTRS) | {"state"}
        self.assertEqual(sorted(set(vars(proto)) - named), [])

    def test_autobahn_readers_of_dropped_state(self):
        """
        Autobahn's server code reads the state LeanServerProtocol drops only
        where odin_ws/shard/clients/lean.py says.
        """
        found: dict[str, set[str]] = {}
        for klass in ClientProtocol.__mro__:
            if not klass.__module__.startswith("autobahn."):
                continue
            for attr, fn in vars(klass).items():
                fn = fn.fget if isinstance(fn, property) else fn
                if not inspect.isfunction(fn):
                    continue
                source = inspect.getsource(fn)
                for name in READERS:
                    if re.search(rf"\bself\.{re.escape(name)}\b", source):
                        found.setdefault(name, set()).add(f"{klass.__name__}.{attr}")
        self.assertEqual(found, READERS)

    def test_close_state_attributes(self):
        """
        ClientProtocol reads closedByMe and localCloseCode after a close it
        started, and closes with 1008 through sendCloseFrame (sendClose
        refuses that code).
        """
        proto, transport = handshaken_protocol()
        e = self.assertRaises(Exception, proto.sendClose, 1008, "policy")  # noqa: B017 - Autobahn raises a bare Exception
        self.assertIn("1008", str(e))
        proto.sendCloseFrame(code=1008, reasonUtf8=b"rate limit exceeded", isReply=False)
        self.assertEqual((proto.closedByMe, proto.localCloseCode), (True, 1008))
        [(op, payload)] = parse_frames(transport.value())
        self.assertEqual((op, payload[:2]), (8, (1008).to_bytes(2, "big")))


class HolderTests(SynchronousTestCase):
    """OutboxHolder sees every state change Autobahn makes."""

    def test_closeFrameClosesTheOutbox(self):
        from autobahn.twisted.websocket import WebSocketServerProtocol

        # Autobahn's own two bases disagree on the types of peer and _transport_details.
        class Held(OutboxHolder, WebSocketServerProtocol):  # type: ignore[misc]
            pass
        proto, transport = handshaken_protocol(Held)
        self.assertEqual(proto.state, WebSocketProtocol.STATE_OPEN)
        box = Outbox(proto, Fanout(Clock(), WriteStats()), lambda t: "drop", 1 << 20, 5.0,
                     lambda: None)
        proto.outbox = box
        box.push(b"x", "a", "t")
        proto.sendClose(4008, "slow consumer")
        self.assertEqual(proto.state, WebSocketProtocol.STATE_CLOSING)
        self.assertTrue(box.closed)
        self.assertEqual(box.queued(), 0)
        self.assertIsNone(transport.producer)


class AutobahnTests(SynchronousTestCase):
    """What the writer assumes of Autobahn's server protocol."""

    def test_states(self):
        """STATE_OPEN exists and differs from the closing and closed states."""
        states = {WebSocketProtocol.STATE_OPEN, WebSocketProtocol.STATE_CLOSING,
                  WebSocketProtocol.STATE_CLOSED}
        self.assertEqual(len(states), 3)

    def test_closeFrameLeavesOpenState(self):
        """sendClose writes the close frame and leaves STATE_OPEN in the same call, so
        checking the state before each flush keeps data frames off after it."""
        proto, transport = handshaken_protocol()
        proto.sendClose(1000)
        self.assertEqual(proto.state, WebSocketProtocol.STATE_CLOSING)
        self.assertEqual([op for op, _ in parse_frames(transport.value())], [8])

    def test_sendMessageWritesThrough(self):
        """Autobahn's own messages go to transport.write at once (no queue of its own),
        so 'Twisted holds nothing' means nothing of Autobahn's is pending either."""
        proto, transport = handshaken_protocol()
        proto.sendMessage(b"{}")
        self.assertEqual(parse_frames(transport.value()), [(1, b"{}")])
        self.assertEqual(len(proto.send_queue), 0)

    def test_dropConnectionUnregistersProducer(self):
        """dropConnection unregisters the transport's producer before closing, so a
        paused Outbox never holds a closing connection open."""
        proto, transport = handshaken_protocol()
        box = Outbox(proto, Fanout(Clock(), WriteStats()), lambda t: "drop", 1 << 20, 5.0,
                     lambda: None)
        self.assertIs(transport.producer, box)
        proto.dropConnection(abort=True)
        self.assertIsNone(transport.producer)


class NagleTests(TestCase):
    """
    Autobahn 26.10 means to set TCP_NODELAY but never does (it reads the
    option before copying it from the factory); ClientProtocol.connectionMade
    sets it itself.
    """

    def setUp(self):
        from twisted.internet import reactor
        self.reactor = reactor

    @staticmethod
    def nodelay(transport) -> int:
        sock = transport.getHandle()
        return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)

    def test_autobahnAloneLeavesNagleOn(self):
        """
        The reason for the workaround: when this fails, Autobahn sets the
        option itself and ClientProtocol.connectionMade's own call can go.
        """
        from autobahn.twisted.websocket import (
            WebSocketServerFactory,
            WebSocketServerProtocol,
        )
        factory = WebSocketServerFactory()
        factory.protocol = WebSocketServerProtocol
        factory.setProtocolOptions(tcpNoDelay=True, openHandshakeTimeout=0,
                                   closeHandshakeTimeout=0, autoPingInterval=0)
        self.patch(__import__("txaio").config, "loop", self.reactor)
        made = []
        original = factory.buildProtocol
        factory.buildProtocol = lambda addr: made.append(original(addr)) or made[-1]
        _, client = tcp_pair(self.reactor, factory=factory)
        [proto] = made
        self.addCleanup(client.sock.close)
        self.addCleanup(proto.transport.abortConnection)
        self.assertEqual(self.nodelay(proto.transport), 0)
