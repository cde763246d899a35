"""
Tests for L{odin_ws.shard.clients.lean}: what a shard's connection keeps in memory.
The Autobahn internals it builds on are guarded in
tests/shard/clients/test_autobahn_internals.py.
"""

from __future__ import annotations

import sys

from autobahn.twisted.websocket import WebSocketServerProtocol
from twisted.trial.unittest import SynchronousTestCase

from odin_ws.common.settings import Settings
from odin_ws.shard.clients.autobahn_internals import HANDSHAKE_ATTRS
from odin_ws.shard.clients.lean import LeanServerProtocol
from odin_ws.shard.clients.websocket import ClientProtocol
from odin_ws.shard.delivery.subscriptions import SubscriptionIndex
from tests.helpers import ShardClient, ShardTestCase, client_frame, text


class SlotTests(ShardTestCase):
    """Autobahn's and odinws's per-connection state lives in slots, not in a __dict__."""

    settings = {"keepalive.idle_timeout": 0}

    def assertNoDict(self, client: ShardClient, stage: str) -> None:
        self.assertEqual(sorted(vars(client.proto)), [],
                         f"attributes outside the slots after {stage}: add them to "
                         "odin_ws/shard/clients/lean.py (Autobahn's) or ClientProtocol.__slots__")

    def test_lifecycle_keeps_no_instance_dict(self):
        """
        Through a connection's life (handshake with subprotocol and origin,
        subscribe, event, client ping message, server ping answered, a
        fragmented message, unsubscribe, client-initiated close) no
        attribute lands in the instance __dict__.
        """
        client = self.connect(headers=("Origin: https://example.com",
                                       "Sec-WebSocket-Protocol: chat, odinws"))
        self.assertNoDict(client, "the handshake")
        self.subscribe(client, "odin.token.T1.trade")
        self.publish("T1")
        client.send(text({"type": "ping", "id": 1}))
        client.send(client_frame(1, b'{"type":', fin=False) + client_frame(0, b'"ping"}'))
        self.assertEqual([op for op, _ in client.frames()], [1, 1, 1])
        self.advance(self.config["keepalive.ping_interval"] + 0.5)
        [(op, ping)] = client.frames()
        self.assertEqual(op, 9)
        client.send(client_frame(10, ping))
        client.send(text({"type": "unsubscribe", "channels": ["odin.token.T1.trade"]}))
        self.assertNoDict(client, "messages and pings")
        client.send(client_frame(8, (1000).to_bytes(2, "big")))
        self.assertTrue(client.lost)
        self.assertNoDict(client, "the close")

    def test_server_close_keeps_no_instance_dict(self):
        """A close the server starts (and its timeout) stores nothing in the __dict__ either."""
        client = self.connect()
        client.proto.sendClose(1000, "bye")
        self.advance(3)     # close handshake timeout: the client never answered
        self.assertTrue(client.lost)
        self.assertNoDict(client, "a server close")

    def test_settings_reach_each_connection(self):
        """
        The factory's settings reach each connection (from its class, not
        copied onto it); after the factory takes new settings (none of
        Autobahn's is live today: a restart applies them), the connections
        made from then on get the new ones and those made before keep
        theirs, as Autobahn's copy at connect did.
        """
        before = self.connect()
        self.assertEqual(before.proto.maxMessagePayloadSize,
                         self.config["limits.max_message_bytes"])
        self.assertEqual(before.proto.openHandshakeTimeout, self.config["limits.handshake_timeout"])
        self.assertEqual(sorted(vars(before.proto)), [])
        old = self.config["limits.handshake_timeout"]
        self.shard.factory.reconfigure(Settings.from_config(
            self.config.replace(**{"limits.handshake_timeout": old + 7})))
        after = self.connect(ip="10.0.0.2")
        self.assertEqual(after.proto.openHandshakeTimeout, old + 7)
        self.assertEqual(before.proto.openHandshakeTimeout, old)
        self.assertIsInstance(after.proto, ClientProtocol)

    def test_open_and_closed_futures_are_not_kept(self):
        """
        Autobahn's is_open / is_closed are one inert object for every
        connection (resolving it does nothing, waiting on it is refused),
        and a connection's open and close still run as before.
        """
        client = self.connect()
        other = self.connect(ip="10.0.0.2")
        self.assertIs(client.proto.is_open, other.proto.is_closed)
        with self.assertRaises(AttributeError):
            client.proto.is_closed.addCallback(lambda _: None)
        client.send(client_frame(8, (1000).to_bytes(2, "big")))
        self.assertTrue(client.lost)


class SlotDefaultTests(ShardTestCase):
    def test_shadowed_class_attributes_are_instance_defaults(self):
        """
        A slot hides the class attribute of the same name; a new protocol
        still reads the value the class hierarchy gives.
        """
        proto = ClientProtocol()
        self.assertEqual((proto.connected, proto.factory, proto.transport, proto.outbox,
                          proto.peer), (0, None, None, None, WebSocketServerProtocol.peer))
        self.assertEqual((proto.session, proto.head_gate, proto.deny_body), (None, None, None))

    def test_slot_over_a_method_refused(self):
        """A slot named like a method or property of a base is refused when the class is made."""
        with self.assertRaises(TypeError):
            type("Bad", (LeanServerProtocol,), {"__slots__": ("sendMessage",)})
        with self.assertRaises(TypeError):
            type("Bad", (ClientProtocol,), {"__slots__": ("transport_details",)})


class DroppedStateTests(ShardTestCase):
    """State only the handshake (or one frame) reads is gone once it is done."""

    settings = {"keepalive.idle_timeout": 0, "keepalive.ping_interval": 0}

    def test_handshake_state_dropped_at_open(self):
        """
        An open connection keeps no request, headers, response or transport
        details; Autobahn's results it reads later stay.
        """
        client = self.connect()
        proto = client.proto
        self.assertEqual([n for n in HANDSHAKE_ATTRS if hasattr(proto, n)], [])
        self.assertIsNone(proto.transport_details)
        self.assertEqual((proto.websocket_version, proto.websocket_protocol_in_use,
                          proto.websocket_extensions_in_use), (13, None, []))
        self.assertEqual(proto.peer, f"tcp4:{client.peer.host}:{client.peer.port}")

    def test_no_write_queue_until_a_chopped_write(self):
        """
        An open connection has no queue for chopped writes; a synchronous or
        chopped write still goes out, in order, after what was sent before.
        """
        client = self.connect()
        proto = client.proto
        self.assertEqual(proto.send_queue, ())
        proto.sendMessage(b'"a"')
        proto.sendMessage(b'"b"', sync=True)
        proto.sendData(b"\x81\x03\"c\"", chopsize=2)
        proto.sendMessage(b'"d"')
        for _ in range(5):  # Autobahn sends one queued piece per reactor turn
            self.advance(0.001)
        self.assertEqual(client.frames(), [(1, b'"a"'), (1, b'"b"'), (1, b'"c"'), (1, b'"d"')])

    def test_frame_state_dropped_after_frame(self):
        """
        After a complete message the frame's unmasker and the UTF-8 verdict
        are gone; a frame split across reads and a fragmented message still
        decode (the unmasker and verdict live while they are needed).
        """
        client = self.connect()
        proto = client.proto
        whole = client_frame(1, b'{"type":"ping","id":1}')
        client.send(whole[:9])
        self.assertIsNotNone(proto.current_frame_masker)
        client.send(whole[9:])
        self.assertEqual((proto.current_frame_masker, proto.utf8validateLast), (None, None))
        client.send(client_frame(1, b'{"type":"pi', fin=False))
        self.assertIsNotNone(proto.utf8validateLast)
        client.send(client_frame(9, b"hi") + client_frame(0, b'ng","id":2}'))
        self.assertEqual(client.frames(), [(1, b'{"type":"pong","id":1}'), (10, b"hi"),
                                           (1, b'{"type":"pong","id":2}')])
        self.assertEqual((proto.current_frame_masker, proto.utf8validateLast), (None, None))


class SubscriberPatternsTests(SynchronousTestCase):
    """The index's record of a subscriber's patterns is small while they are few."""

    def test_one_pattern_costs_a_small_tuple(self):
        """A subscriber with one pattern costs a 1-tuple (48 bytes), not a set (216)."""
        index = SubscriptionIndex()
        index.add("s", "*", "*")
        self.assertLess(sys.getsizeof(index._patterns["s"]), sys.getsizeof(set()) // 3)

    def test_many_patterns_then_few(self):
        """
        Past a few patterns a subscriber's record becomes a set; adding,
        removing, counting and matching give the same answers either side.
        """
        index = SubscriptionIndex()
        tokens = [f"T{i}" for i in range(20)]
        for t in tokens:
            self.assertTrue(index.add("s", t, "trade"))
            self.assertFalse(index.add("s", t, "trade"))
        index.add("other", "T3", "trade")
        self.assertEqual((index.count("s"), index.total), (20, 21))
        for t in tokens[:17]:
            self.assertTrue(index.remove("s", t, "trade"))
            self.assertFalse(index.remove("s", t, "trade"))
        self.assertEqual(index.patterns_of("s"), {(t, "trade") for t in tokens[17:]})
        self.assertTrue(index.holds("s", "T19", "trade"))
        self.assertFalse(index.holds("s", "T3", "trade"))
        self.assertEqual(set(index.match("T3", "trade")), {"other"})
        self.assertEqual(index.remove_all("s"), 3)
        small = SubscriptionIndex()
        for t in tokens[:3]:
            small.add("s", t, "trade")
        self.assertTrue(small.remove("s", "T1", "trade"))
        self.assertEqual((small.patterns_of("s"), small.count("s")),
                         ({("T0", "trade"), ("T2", "trade")}, 2))
        self.assertEqual(small.remove_all("s"), 2)
        self.assertEqual((len(index), index.subscribers, index.total), (1, 1, 1))
        self.assertEqual((len(small), small.subscribers, small.total), (0, 0, 0))


class IdleTimerTests(ShardTestCase):
    settings = {"keepalive.ping_interval": 0}

    def test_subscribing_cancels_the_idle_timer(self):
        """
        The first subscription cancels the connection's idle-close timer
        (the idle close only concerns connections that never subscribe);
        one that has not subscribed keeps it.
        """
        idle, busy = self.connect(), self.connect("10.0.0.2")
        timer = busy.proto.session._idle_call
        self.assertTrue(timer.active())
        self.subscribe(busy, "odin.token.T1.trade")
        self.assertFalse(timer.active())
        self.assertNotIn(timer, self.clock.getDelayedCalls())
        self.assertIsNone(busy.proto.session._idle_call)
        self.assertIn(idle.proto.session._idle_call, self.clock.getDelayedCalls())
