"""Tests for L{odin_ws.shard.kafka.records}."""

from __future__ import annotations

import json

from twisted.trial.unittest import SynchronousTestCase

from odin_ws.common import metrics, topicoptions
from odin_ws.common.config import Config, validate
from odin_ws.common.events import Event
from odin_ws.common.settings import Settings
from odin_ws.shard.history.holes import UNDECODABLE, Hole, is_hole
from odin_ws.shard.kafka.records import REASONS, RecordMapper
from odin_ws.shard.kafka.valueformats import ValueDecoder

TOPICS = {"odin.trades": "trade", "odin.prices": "price"}


def mapper(token_field: str = "", event_type_field: str = "",
           max_record_bytes: int = 1024 * 1024) -> RecordMapper:
    options = topicoptions.for_topics(TOPICS, {}, token_field, event_type_field)
    return RecordMapper(TOPICS, options, ValueDecoder(None), max_record_bytes,
                        clock=lambda: 1700000000.1234)


def build(m: RecordMapper, value: bytes | None, key: bytes | None = b"ABC",
          topic: str = "odin.trades", ts: int = 1234) -> Event | str:
    return m.map(topic, key, value, ts, 3, 42)


def reason_of(result: Event | str) -> str:
    """Why a record was rejected: the reason, or the reason of its L{Hole}."""
    return result.reason if isinstance(result, Hole) else result  # type: ignore[return-value]


class RecordMapperTests(SynchronousTestCase):

    def test_keyToken(self) -> None:
        """
        With no token field the token id is the record key, the event type
        comes from the topic, and the envelope embeds the value's bytes as
        they are, next to the record's timestamp and Kafka position.
        """
        event = build(mapper(), b'{"price": 1.50, "qty":2}')
        self.assertIsInstance(event, Event)
        self.assertEqual(event.envelope,
                         b'{"type":"event","channel":"odin.token.ABC.trade",'
                         b'"data":{"price": 1.50, "qty":2},"ts":1234,"pos":"odin.trades:3:0:42"}')
        self.assertEqual((event.channel, event.token, event.event_type, event.ts),
                         ("odin.token.ABC.trade", "ABC", "trade", 1234))
        self.assertEqual((event.topic, event.partition, event.offset), ("odin.trades", 3, 42))

    def test_envelopeIsJSON(self) -> None:
        """
        The envelope parses back to the record's value, also for non-object
        values and with JSON whitespace around the value (which is dropped).
        """
        for value, data in [(b'\n {"a": [1, "x"]}\r\n', {"a": [1, "x"]}),
                            (b'"just a string"', "just a string"), (b"7", 7),
                            (b"null", None), (b'"\\u00e9\xc3\xa9"', "\u00e9\u00e9")]:
            event = build(mapper(), value)
            self.assertEqual(json.loads(event.envelope),
                             {"type": "event", "channel": "odin.token.ABC.trade",
                              "data": data, "ts": 1234, "pos": "odin.trades:3:0:42"})
        self.assertEqual(build(mapper(), b" [1] ").envelope,
                         b'{"type":"event","channel":"odin.token.ABC.trade","data":[1],"ts":1234,'
                         b'"pos":"odin.trades:3:0:42"}')

    def test_position_names_the_epoch(self) -> None:
        """The envelope's position carries the topic's epoch when the mapper is given one."""
        event = mapper().map("odin.trades", b"ABC", b"1", 1234, 3, 42, "k2f9")
        self.assertEqual(json.loads(event.envelope)["pos"], "odin.trades:3:k2f9:42")

    def test_fieldToken(self) -> None:
        """
        With a token field the token id comes from that field of the JSON
        object, as a string or an integer, and the key is ignored.
        """
        m = mapper(token_field="token")
        self.assertEqual(build(m, b'{"token": "T-1:x"}', key=None).token, "T-1:x")
        self.assertEqual(build(m, b'{"token": 901}', key=b"other").token, "901")

    def test_eventTypeOverride(self) -> None:
        """
        The event type field, when present and not null, replaces the topic's
        event type; absent or null, the topic decides.
        """
        m = mapper(event_type_field="kind")
        self.assertEqual(build(m, b'{"kind": "swap"}').channel, "odin.token.ABC.swap")
        self.assertEqual(build(m, b'{"kind": null}').event_type, "trade")
        self.assertEqual(build(m, b'{"other": 1}').event_type, "trade")
        self.assertEqual(build(m, b'[1, 2]').event_type, "trade")
        self.assertEqual(build(m, b'{"kind": "x"}', topic="odin.prices").event_type, "x")

    def test_missingTimestamp(self) -> None:
        """
        A record without a Kafka timestamp (-1) is stamped with the current
        time in milliseconds.
        """
        self.assertEqual(build(mapper(), b"{}", ts=-1).ts, 1700000000123)

    def test_unknownTopic(self) -> None:
        """A topic missing from the topic map is rejected as unknown_topic."""
        self.assertEqual(build(mapper(), b"{}", topic="odin.other"), "unknown_topic")

    def test_noValue(self) -> None:
        """A tombstone (no value) or an empty value is rejected as no_value."""
        self.assertEqual(build(mapper(), None), "no_value")
        self.assertEqual(build(mapper(), b""), "no_value")

    def test_tooLarge(self) -> None:
        """
        A value over max_record_bytes is rejected as too_large, before any
        parsing (the 10 MB value is not even valid JSON); the limit itself
        is allowed.
        """
        self.assertEqual(reason_of(build(mapper(), b"[" * (10 * 1024 * 1024))), "too_large")
        m = mapper(max_record_bytes=10)
        self.assertEqual(reason_of(build(m, b'"123456789"')), "too_large")
        self.assertIsInstance(build(m, b'"12345678"'), Event)

    def test_invalidJSON(self) -> None:
        """
        Values that are not strict UTF-8 JSON are rejected as invalid_json:
        truncated text, non-JSON constants, bad UTF-8, a byte-order mark,
        trailing garbage, raw control characters and absurd nesting.
        """
        for value in [b'"not json', b"NaN", b'{"x": Infinity}', b"[-Infinity]",
                      b'"\xff"', b"\xef\xbb\xbf{}", b"{} {}", b'"a\x01"', b"{'a': 1}",
                      b"[" * 100000 + b"]" * 100000, "\"\u00e9\"".encode("latin-1")]:
            self.assertEqual(reason_of(build(mapper(), value)), "invalid_json", value[:20])

    def test_noToken(self) -> None:
        """
        A record without a key (key mode) or without the token field, or
        whose value is not an object (field mode), is rejected as no_token.
        """
        self.assertEqual(build(mapper(), b"{}", key=None), "no_token")
        self.assertEqual(build(mapper(), b"{}", key=b""), "no_token")
        m = mapper(token_field="token")
        for value in [b'{"tok": "A"}', b'{"token": null}', b'["token"]', b'"token"']:
            self.assertEqual(build(m, value), "no_token", value)

    def test_invalidToken(self) -> None:
        """
        A token that is not a channel segment (dots, wildcard, spaces, too
        long, bad UTF-8 key) or a token field of another JSON type is
        rejected as invalid_token.
        """
        for key in [b"a.b", b"*", b"a b", b"x" * 129, b"\xff"]:
            self.assertEqual(build(mapper(), b"{}", key=key), "invalid_token", key)
        m = mapper(token_field="token")
        for value in [b'{"token": "a.b"}', b'{"token": true}', b'{"token": 1.5}',
                      b'{"token": ["A"]}', b'{"token": ""}', b'{"token": {"a": 1}}']:
            self.assertEqual(build(m, value), "invalid_token", value)

    def test_invalidEventType(self) -> None:
        """
        An event type field that is not a string channel segment is rejected
        as invalid_event_type.
        """
        m = mapper(event_type_field="kind")
        for value in [b'{"kind": "a.b"}', b'{"kind": "*"}', b'{"kind": 5}', b'{"kind": ""}']:
            self.assertEqual(build(m, value), "invalid_event_type", value)

    def test_reasonsAreFixed(self) -> None:
        """Every rejection reason returned above belongs to the published set."""
        self.assertEqual(set(REASONS), {"unknown_topic", "no_value", "too_large",
                                        "invalid_json", "no_token", "invalid_token",
                                        "invalid_event_type", "not_wire_format",
                                        "unknown_schema", "registry_unavailable", "schema_references",
                                        "schema_type_mismatch", "corrupt_value"})

    def test_fromSettings(self) -> None:
        """
        A mapper built from the typed Kafka settings uses their topics,
        token field, event type field and size limit.
        """
        settings = Settings.from_config(Config(validate({
            "kafka.topics": {"odin.trades": "trade"}, "kafka.token_field": "tok",
            "kafka.event_type_field": "kind", "kafka.max_record_bytes": 64})))
        m = RecordMapper.from_settings(settings.kafka, clock=lambda: 1.0)
        options = m.options["odin.trades"]
        self.assertEqual((m.event_types, str(options.token), str(options.event_type),
                          options.format, m.max_record_bytes),
                         ({"odin.trades": "trade"}, "field:tok", "field:kind", "json", 64))
        event = m.map("odin.trades", None, b'{"tok": "X", "kind": "price"}', -1, 0, 7)
        self.assertEqual((event.channel, event.ts, event.offset), ("odin.token.X.price", 1000, 7))


class HoleTests(SynchronousTestCase):
    """Records given up on: holes when their channel is known, untold otherwise."""

    def test_undecodableWithKnownChannel(self) -> None:
        """
        A value that is not JSON, with the token id in the key and the event
        type from the topic, becomes a hole: an event of its channel and
        position whose envelope is the documented gap message, naming the
        hole's own position, with the rejection reason as its detail.
        """
        hole = build(mapper(), b'{"price": 1.5', ts=1234)
        self.assertIsInstance(hole, Hole)
        assert isinstance(hole, Hole)
        self.assertEqual((hole.reason, hole.channel, hole.topic, hole.partition, hole.offset,
                          hole.ts), ("invalid_json", "odin.token.ABC.trade", "odin.trades",
                                     3, 42, 1234))
        self.assertTrue(is_hole(hole))
        self.assertEqual(json.loads(hole.envelope),
                         {"type": "gap", "reason": UNDECODABLE, "detail": "invalid_json",
                          "channel": "odin.token.ABC.trade",
                          "streams": {"odin.trades:3:0": "odin.trades:3:0:42"}})

    def test_goodRecordIsNoHole(self) -> None:
        """A record that decodes is an event, never taken for a hole."""
        self.assertFalse(is_hole(build(mapper(), b'{"type":"gap"}')))

    def test_headerEventType(self) -> None:
        """
        An event type read from a header names the hole's channel; the
        topic's type when the header is absent, as for an event.
        """
        options = topicoptions.for_topics(TOPICS, {"odin.trades": {"event_type": "header:kind"}},
                                          "", "")
        m = RecordMapper(TOPICS, options, ValueDecoder(None), 1024)
        hole = m.map("odin.trades", b"ABC", b"{", 5, 0, 7, headers=lambda: [("kind", b"fill")])
        self.assertEqual(hole.channel, "odin.token.ABC.fill")
        hole = m.map("odin.trades", b"ABC", b"{", 5, 0, 7, headers=lambda: [])
        self.assertEqual(hole.channel, "odin.token.ABC.trade")

    def test_channelInTheValue(self) -> None:
        """
        When the token id (or the event type) is a field of the value that
        could not be decoded, nobody can be told: the reason comes back and
        the record is counted as untold.
        """
        untold = metrics.KAFKA_UNTOLD.labels("invalid_json")
        before = untold._value.get()
        self.assertEqual(build(mapper(token_field="token"), b"{"), "invalid_json")
        self.assertEqual(build(mapper(event_type_field="kind"), b"{"), "invalid_json")
        self.assertEqual(untold._value.get(), before + 2)

    def test_invalidKey(self) -> None:
        """A key that is no valid token id leaves the channel unknown: untold."""
        self.assertEqual(build(mapper(), b"{", key=b"a b"), "invalid_json")
        self.assertEqual(build(mapper(), b"{", key=None), "invalid_json")
