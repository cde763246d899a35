"""
Tests for L{odin_ws.common.events}: the envelope and the batch codec the
hub relays between shards.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from odin_ws.common.events import Event, decode_batch, encode_batch


class EnvelopeTests(SynchronousTestCase):

    def test_envelope_bytes(self):
        """
        The envelope is docs/protocol.md's event message to the byte: the
        value's JSON embedded as it is, the position when the event has a
        topic (epoch "0" when unknown), none without one.
        """
        e = Event.build("ABC", "trade", b'{"p": 1.50}', 1700000000123, "odin.tr\u00e4des", 3,
                        2**40, epoch="1k9x2f")
        self.assertEqual(e.envelope,
                         b'{"type":"event","channel":"odin.token.ABC.trade","data":{"p": 1.50},'
                         b'"ts":1700000000123,"pos":"odin.tr\xc3\xa4des:3:1k9x2f:1099511627776"}')
        self.assertEqual(Event.build("X", "price", b"[]", 5, "t", 0, 0).envelope,
                         b'{"type":"event","channel":"odin.token.X.price","data":[],"ts":5,'
                         b'"pos":"t:0:0:0"}')
        self.assertEqual(Event.build("X", "price", b'"s"', 5).envelope,
                         b'{"type":"event","channel":"odin.token.X.price","data":"s","ts":5}')


class BatchCodecTests(SynchronousTestCase):

    def test_roundTrip(self):
        """
        Every field survives the relay: channel parts, envelope, timestamp,
        Kafka position, the topic's epoch and the consumed-at time (so the
        receiving shard can split latency into the broker's share and
        odinws's own).
        """
        events = [Event.build("ABC", "trade", b'{"p":1}', 1700000000123, "odin.trades", 3,
                              2**40, epoch="1k9x2f", consumed=1700000000.125),
                  Event.build("X", "price", b"[]", 5, "t\u00e9", 0, 0)]
        [a, b] = decode_batch(encode_batch(events))
        self.assertEqual((a.token, a.event_type, a.channel, a.envelope, a.ts, a.topic,
                          a.partition, a.offset, a.epoch, a.consumed),
                         ("ABC", "trade", "odin.token.ABC.trade", events[0].envelope,
                          1700000000123, "odin.trades", 3, 2**40, "1k9x2f", 1700000000.125))
        self.assertEqual((b.topic, b.epoch, b.consumed), ("t\u00e9", "", 0.0))

    def test_truncated(self):
        """A batch cut anywhere inside an event is refused with ValueError."""
        data = encode_batch([Event.build("ABC", "trade", b"1", 1, "t", 0, 1, epoch="e")])
        for cut in range(1, len(data)):
            self.assertRaises(ValueError, decode_batch, data[:cut])
