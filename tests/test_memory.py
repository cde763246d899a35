"""
Tests for L{odin_ws.footprint}: what a shard's connection keeps in memory.
They guard assumptions about Autobahn's internals as well; when one fails
after an upgrade, read the new Autobahn code, adapt odin_ws/footprint.py,
then the test.
"""

from __future__ import annotations

from autobahn.twisted.websocket import WebSocketServerProtocol

from odin_ws.footprint import LeanServerProtocol
from odin_ws.protocol import ClientProtocol
from tests.test_protocol import Client, ShardTestCase, client_frame, text


class SlotTests(ShardTestCase):
    """Autobahn's and odinws's per-connection state lives in slots, not in a __dict__."""

    settings = {"keepalive.idle_timeout": 0}

    def assertNoDict(self, client: Client, stage: str) -> None:
        self.assertEqual(sorted(vars(client.proto)), [],
                         f"attributes outside the slots after {stage}: add them to "
                         "odin_ws/footprint.py (Autobahn's) or ClientProtocol.__slots__")

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

    def test_settings_copied_per_connection(self):
        """The factory's settings still reach each connection (now in slots)."""
        client = self.connect()
        self.assertEqual(client.proto.maxMessagePayloadSize,
                         self.config["limits.max_message_bytes"])
        self.assertEqual(client.proto.autoPingInterval, self.config["keepalive.ping_interval"])


class SlotDefaultTests(ShardTestCase):
    def test_shadowed_class_attributes_are_instance_defaults(self):
        """
        A slot hides the class attribute of the same name; a new protocol
        still reads the value the class hierarchy gives.
        """
        proto = ClientProtocol()
        self.assertEqual((proto.connected, proto.factory, proto.transport, proto.outbox,
                          proto.peer), (0, None, None, None, WebSocketServerProtocol.peer))
        self.assertEqual((proto.bucket, proto.ever_subscribed, proto.client_ip), (None, False, ""))

    def test_slot_over_a_method_refused(self):
        """A slot named like a method or property of a base is refused when the class is made."""
        with self.assertRaises(TypeError):
            type("Bad", (LeanServerProtocol,), {"__slots__": ("sendMessage",)})
        with self.assertRaises(TypeError):
            type("Bad", (ClientProtocol,), {"__slots__": ("transport_details",)})

    def test_every_autobahn_setting_has_a_slot(self):
        """Autobahn copies CONFIG_ATTRS onto each connection: each has a slot."""
        missing = [name for name in WebSocketServerProtocol.CONFIG_ATTRS
                   if name not in LeanServerProtocol.__slots__]
        self.assertEqual(missing, [])
