"""
Tests for L{odin_ws.shard.kafka.valueformats}, L{odin_ws.shard.kafka.schemasource}
and the record mapper's use of them: values encoded by confluent-kafka's own
serializers, schemas held by its mock registry client.
"""

from __future__ import annotations

import datetime
import decimal
import json
import threading
from typing import Any

from confluent_kafka.schema_registry import (
    Schema,
    SchemaReference,
    SchemaRegistryClient,
    SchemaRegistryError,
)
from confluent_kafka.schema_registry.avro import AvroSerializer
from twisted.trial.unittest import SynchronousTestCase

from odin_ws.common import topicoptions
from odin_ws.common.config import Config, validate
from odin_ws.common.events import Event
from odin_ws.common.settings import SchemaRegistrySettings, Settings
from odin_ws.common.topicoptions import ValueFormat
from odin_ws.shard.kafka.decoded import Decoded, strict_json
from odin_ws.shard.kafka.records import RecordMapper
from odin_ws.shard.kafka.schemasource import Missing, SchemaSource, client_config
from odin_ws.shard.kafka.valueformats import UndecodableAudit, ValueDecoder
from tests.helpers.schemas import (
    AVRO_FILL,
    AVRO_TRADE_V2,
    AVRO_VENUE,
    ProtobufFill,
    ProtobufTrade,
    avro_serializer,
    context,
    json_serializer,
    protobuf_serializer,
)

_mocks = 0


def registry_settings(**kw: Any) -> SchemaRegistrySettings:
    values = {"schema_registry.url": "http://registry.invalid"}
    values.update({f"schema_registry.{k}": v for k, v in kw.items()})
    return Settings.from_config(Config(validate(values))).schema_registry


def mock_client() -> Any:
    """A fresh mock registry (confluent-kafka keeps one per URL)."""
    global _mocks
    _mocks += 1
    return SchemaRegistryClient.new_client({"url": f"mock://odinws-{_mocks}"})


TRADE = {"token": "ABC", "price": decimal.Decimal("12.3400"), "side": "SELL",
         "at": datetime.datetime(2026, 1, 2, 3, 4, 5, 123000, tzinfo=datetime.UTC),
         "raw": b"\x00\xff", "venue": 7, "ratio": float("nan")}


class Audit:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []

    def __call__(self, reason: str, topic: str, partition: int, offset: int,
                 detail: str) -> None:
        self.lines.append((reason, detail))


class ValueDecoderTests(SynchronousTestCase):

    def setUp(self) -> None:
        self.client = mock_client()
        self.audit = Audit()
        self.decoder = ValueDecoder(SchemaSource(registry_settings(), lambda: self.client),
                                    self.audit)

    def decode(self, fmt: ValueFormat, value: bytes) -> Decoded | str:
        return self.decoder.decode(fmt, value, "odin.trades", 0, 1)

    def test_avro_json_mapping(self) -> None:
        """
        An Avro value becomes the documented JSON: decimal as an exact string,
        enum as its symbol, timestamp-millis as RFC 3339 UTC, bytes as base64,
        a union as its branch's value, NaN as the string "NaN".
        """
        value = avro_serializer(self.client)(TRADE, context("odin.trades"))
        decoded = self.decode(ValueFormat.AVRO, value)
        self.assertIsInstance(decoded, Decoded)
        self.assertEqual(decoded.json, b'{"token":"ABC","price":"12.3400","side":"SELL",'
                         b'"at":"2026-01-02T03:04:05.123Z","raw":"AP8=","venue":7,'
                         b'"ratio":"NaN"}')
        self.assertEqual((decoded.fields or {})["token"], "ABC")

    def test_avro_evolved_schema(self) -> None:
        """Values of two versions of a subject both decode, each with its own fields."""
        old = avro_serializer(self.client)({**TRADE, "ratio": 0.5}, context("odin.trades"))
        new = avro_serializer(self.client, AVRO_TRADE_V2)({**TRADE, "ratio": 0.5, "fee": "low"},
                                                          context("odin.trades"))
        self.assertNotIn(b'"fee"', self.decode(ValueFormat.AVRO, old).json)
        self.assertTrue(self.decode(ValueFormat.AUTO, new).json.endswith(b'"fee":"low"}'))

    def test_protobuf_json_mapping(self) -> None:
        """
        A Protobuf value becomes protobuf's canonical JSON with the .proto
        field names: int64 as a string, bytes as base64, enum as its name,
        Timestamp as RFC 3339, only the oneof member that is set, fields at
        their default included.
        """
        msg = ProtobufTrade(token="X", qty=5, raw=b"ab", side=2, pool="uni")
        msg.at.FromSeconds(1700000000)
        value = protobuf_serializer(self.client)(msg, context("odin.trades"))
        decoded = self.decode(ValueFormat.PROTOBUF, value)
        self.assertEqual(json.loads(decoded.json),
                         {"token": "X", "qty": "5", "raw": "YWI=", "side": "SELL",
                          "at": "2023-11-14T22:13:20Z", "pool": "uni", "price": 0.0})

    def test_avro_named_reference(self) -> None:
        """
        An Avro schema naming a type registered under another subject
        decodes, the referenced type's fields included.
        """
        self.client.register_schema("venue", Schema(AVRO_VENUE, "AVRO"))
        schema = Schema(AVRO_FILL, "AVRO", [SchemaReference("odin.test.Venue", "venue", 1)])
        value = AvroSerializer(self.client, schema)({"token": "F", "venue": {"mic": "XNAS"}},
                                                    context("odin.fills"))
        self.assertEqual(self.decode(ValueFormat.AVRO, value).json,
                         b'{"token":"F","venue":{"mic":"XNAS"}}')

    def test_protobuf_reference_to_another_subject(self) -> None:
        """
        A Protobuf file importing another registered file (a reference to
        its subject, which itself imports a well-known type) decodes.
        """
        message = ProtobufFill(token="F")
        message.venue.mic = "XNAS"
        message.venue.opened.FromSeconds(0)
        value = protobuf_serializer(self.client, ProtobufFill)(message, context("odin.fills"))
        self.assertEqual(self.client.get_subjects(), ["odin_test_venue.proto", "odin.fills-value"])
        self.assertEqual(json.loads(self.decode(ValueFormat.PROTOBUF, value).json), {
            "token": "F", "venue": {"mic": "XNAS", "opened": "1970-01-01T00:00:00Z"}})

    def test_jsonschema_validated(self) -> None:
        """
        A JSON Schema value is validated against its schema: a valid one is
        delivered, one that breaks the schema is corrupt_value, audited.
        """
        value = json_serializer(self.client)({"token": "J", "price": 2.5}, context("t"))
        self.assertEqual(self.decode(ValueFormat.JSONSCHEMA, value).json,
                         b'{"token":"J","price":2.5}')
        broken = value[:5] + b'{"token": 5, "price": 1}'
        self.assertEqual(self.decode(ValueFormat.JSONSCHEMA, broken), "corrupt_value")
        self.assertEqual(self.audit.lines[0][0], "corrupt_value")
        self.assertIn("5 is not of type 'string'", self.audit.lines[0][1])

    def test_auto_takes_plain_json(self) -> None:
        """auto reads a value without the magic byte as plain JSON, bytes kept as they are."""
        self.assertEqual(self.decode(ValueFormat.AUTO, b' {"a": 1} ').json, b'{"a": 1}')
        self.assertEqual(self.decode(ValueFormat.AUTO, b"{nope"), "invalid_json")

    def test_undecodable_reasons(self) -> None:
        """
        Plain JSON on an avro topic, an unknown schema id, a truncated value
        and a schema of another type are each skipped with their reason and
        audited; nothing raises.
        """
        value = avro_serializer(self.client)({**TRADE, "ratio": 1.0}, context("t"))
        jvalue = json_serializer(self.client)({"token": "J", "price": 2.5}, context("j"))
        cases = [(ValueFormat.AVRO, b'{"a": 1}', "not_wire_format"),
                 (ValueFormat.AVRO, b"\x00\x00\x00\x03\x99xx", "unknown_schema"),
                 (ValueFormat.AVRO, value[:9], "corrupt_value"),
                 (ValueFormat.PROTOBUF, jvalue, "schema_type_mismatch"),
                 (ValueFormat.PROTOBUF, b"\x00\x00\x00", "not_wire_format")]
        for fmt, raw, reason in cases:
            self.assertEqual((fmt, self.decode(fmt, raw)), (fmt, reason))
        self.assertEqual([r for r, _ in self.audit.lines], [c[2] for c in cases])


class RecordMapperSourcesTests(SynchronousTestCase):

    def setUp(self) -> None:
        self.client = mock_client()
        self.decoder = ValueDecoder(SchemaSource(registry_settings(), lambda: self.client))

    def mapper(self, **entry: str) -> RecordMapper:
        topics = {"odin.trades": "trade"}
        options = topicoptions.for_topics(topics, {"odin.trades": entry}, "", "")
        return RecordMapper(topics, options, self.decoder, 1 << 20)

    def test_token_from_a_header(self) -> None:
        """token: header:NAME reads the token from that header (the last one of that name)."""
        m = self.mapper(format="avro", token="header:token_id")
        value = avro_serializer(self.client)({**TRADE, "ratio": 1.0}, context("odin.trades"))
        event = m.map("odin.trades", b"ignored", value, 5, 0, 9, "",
                      lambda: [("token_id", b"OLD"), ("token_id", b"T1")])
        self.assertIsInstance(event, Event)
        self.assertEqual(event.channel, "odin.token.T1.trade")
        self.assertEqual(m.map("odin.trades", b"K", value, 5, 0, 9, "", lambda: None), "no_token")
        self.assertEqual(m.map("odin.trades", b"K", value, 5, 0, 9, "",
                               lambda: [("token_id", b"\xff")]), "invalid_token")

    def test_token_and_event_type_from_fields(self) -> None:
        """
        token: field:NAME and event_type: field:NAME read the decoded value's
        fields (a Protobuf enum by its name); an event type field absent or
        at null leaves the topic's.
        """
        m = self.mapper(format="protobuf", token="field:token", event_type="field:side")
        value = protobuf_serializer(self.client)(ProtobufTrade(token="P9", side=1),
                                                 context("odin.trades"))
        self.assertEqual(m.map("odin.trades", None, value, 5, 0, 9).channel,
                         "odin.token.P9.BUY")
        m = self.mapper(format="avro", token="field:token", event_type="field:venue")
        avro = avro_serializer(self.client)({**TRADE, "venue": None, "ratio": 1.0},
                                            context("odin.trades"))
        self.assertEqual(m.map("odin.trades", None, avro, 5, 0, 9).channel,
                         "odin.token.ABC.trade")

    def test_event_type_from_a_header(self) -> None:
        """event_type: header:NAME names the event type when the header is there."""
        m = self.mapper(event_type="header:kind")
        event = m.map("odin.trades", b"K", b'{"a":1}', 5, 0, 9, "", lambda: [("kind", b"fill")])
        self.assertEqual(event.channel, "odin.token.K.fill")
        self.assertEqual(m.map("odin.trades", b"K", b"{}", 5, 0, 9, "",
                               lambda: [("kind", b"no good")]), "invalid_event_type")


class FailingClient:
    """A registry client whose requests fail as a registry that is down makes them fail."""

    def __init__(self) -> None:
        self.calls = 0
        self.release = threading.Event()
        self.error: Exception = ConnectionRefusedError("connection refused")

    def get_schema(self, schema_id: int, fmt: str | None = None) -> Any:
        self.calls += 1
        if not self.release.wait(5):
            raise TimeoutError("held")
        raise self.error


class SchemaSourceTests(SynchronousTestCase):

    def setUp(self) -> None:
        self.now = 100.0
        self.client = FailingClient()
        self.source = SchemaSource(registry_settings(wait=0.05, retry=5.0), lambda: self.client,
                                   clock=lambda: self.now)
        self.addCleanup(self.source.close)
        self.addCleanup(self.client.release.set)

    def test_slow_registry_is_waited_for_at_most_wait(self) -> None:
        """
        A registry that does not answer costs the consumer at most
        schema_registry.wait per schema: the record is registry_unavailable
        while the fetch goes on, and /health says unreachable once it fails.
        """
        self.assertEqual(self.source.schema(7), Missing.UNAVAILABLE)
        self.assertEqual(self.source.status()["state"], "idle")
        self.client.release.set()
        self.source._wait = 5.0  # the same fetch, failed now: no waiting on a loaded machine
        self.assertEqual(self.source.schema(7), Missing.UNAVAILABLE)
        self.assertEqual(self.client.calls, 1)
        status = self.source.status()
        self.assertEqual((status["state"], status["schemas"]), ("unreachable", 0))
        self.assertIn("connection refused", status["last_error"])

    def test_failed_fetch_is_retried_after_retry(self) -> None:
        """
        After a failed fetch the schema's records are skipped at once (no
        request) until schema_registry.retry has passed; then it is asked
        for again, and a registry back up serves it.
        """
        self.client.release.set()
        self.source._wait = 5.0
        self.assertEqual(self.source.schema(7), Missing.UNAVAILABLE)
        self.assertEqual(self.source.schema(7), Missing.UNAVAILABLE)
        self.assertEqual(self.client.calls, 1)
        self.now += 5.0
        self.client.error = SchemaRegistryError(404, 40403, "Schema not found")
        self.assertEqual(self.source.schema(7), Missing.UNKNOWN)
        self.assertEqual((self.client.calls, self.source.status()["state"]), (2, "ok"))


class UndecodableAuditTests(SynchronousTestCase):

    def test_rate_limited_per_reason(self) -> None:
        """
        The first undecodable record of a reason is audited at once, the
        next ones at most every 10 s with how many were skipped between.
        """
        lines: list[dict[str, Any]] = []
        now = [0.0]
        audit = UndecodableAudit(lambda fmt, **kw: lines.append(kw), clock=lambda: now[0])
        for _ in range(5):
            audit("corrupt_value", "t", 0, 1, "x")
        audit("unknown_schema", "t", 0, 2, "y")
        now[0] = 10.0
        audit("corrupt_value", "t", 0, 3, "z")
        self.assertEqual([(kw["reason"], kw["offset"], kw["since"]) for kw in lines],
                         [("corrupt_value", 1, 0), ("unknown_schema", 2, 0),
                          ("corrupt_value", 3, 4)])


class ClientConfigTests(SynchronousTestCase):

    def test_credentials_and_tls_from_files(self) -> None:
        """
        The registry client gets basic auth from schema_registry.basic_auth_file
        (not the environment), the TLS files as paths, the timeout, and no
        retries of its own; a file without user:password is refused.
        """
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("reader:s3cret\n")
        conf = client_config(registry_settings(
            url="https://r1:8081,https://r2:8081", basic_auth_file=path, ca_file="/ca.pem",
            certificate="/client.pem", private_key="/client.key", timeout=2.5))
        self.assertEqual(conf, {
            "url": "https://r1:8081,https://r2:8081", "timeout": 2.5, "max.retries": 0,
            "cache.capacity": 1000, "basic.auth.user.info": "reader:s3cret", "ssl.ca.location": "/ca.pem",
            "ssl.certificate.location": "/client.pem", "ssl.key.location": "/client.key"})
        with open(path, "w") as f:
            f.write("no-colon")
        with self.assertRaises(ValueError):
            client_config(registry_settings(basic_auth_file=path))
        # confluent-kafka takes the rest as it is (it opens the TLS files at once).
        SchemaRegistryClient({k: v for k, v in conf.items() if not k.startswith("ssl.")})


class StrictJsonTests(SynchronousTestCase):

    def test_same_as_json_loads_but_constants(self) -> None:
        """
        strict_json (JSONDecoder.decode inlined) gives what json.loads of
        the UTF-8 text gives, the value or the same error and message, for
        values, surrounding whitespace, nothing, extra data, truncation and
        nesting deep enough to recurse out; and refuses what json.loads
        takes but a browser's JSON.parse does not: NaN, the infinities, a
        BOM. Bad UTF-8 is a ValueError.
        """
        cases = [b'{"a":1}', b' {"a":[1,2,{"b":null}]} \n', b'"x"', b"12", b"-0.5e3",
                 b'{"k":"\\ud800"}', b"", b"   ", b'{"a":1} x', b"1 2", b"[1,]", b'{"a":',
                 b"[" * 100_000]
        for value in cases:
            got: tuple[object, object]
            want: tuple[object, object]
            try:
                want = ("value", json.loads(value.decode("utf-8")))
            except (ValueError, RecursionError) as e:
                want = (type(e), str(e))
            try:
                got = ("value", strict_json(value))
            except (ValueError, RecursionError) as e:
                got = (type(e), str(e))
            self.assertEqual(got, want, value[:20])
        for value in (b"NaN", b"[Infinity]", b'{"a":-Infinity}', b"\xef\xbb\xbf{}", b'"\xff"'):
            self.assertRaises(ValueError, strict_json, value)
