"""
Avro, Protobuf and JSON Schema topics through a Schema Registry, end to end:
a real node on the real broker of the suite, a registry process over HTTP,
values produced with confluent-kafka's own serializers, and Python
C{websockets} clients asserting the JSON they receive. Channels come from a
header, from fields of the decoded values and from the topic.

The registry is Apicurio Registry (L{odinws_tools.apicurio}, through its
Confluent-compatible API), except for Protobuf: confluent-kafka's Python
C{ProtobufSerializer} registers a schema as a base64 file descriptor, which
Apicurio 3.3.3 refuses ("Syntax error in Trade.proto:1:1"), and Apicurio
answers C{format=serialized} with the descriptor's raw bytes as text
rather than base64 (bytes over 0x7f come back as U+FFFD), which neither that
serializer nor odinws can read. L{ProtobufTests} therefore run against
odinws's own registry (L{odinws_tools.registry}), which serves both as
Confluent's does.
"""

from __future__ import annotations

import datetime
import decimal
import os
import re
import time
import uuid

from confluent_kafka import Producer
from confluent_kafka.schema_registry import Schema, SchemaReference, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer
from twisted.trial import unittest

from odin_ws.common.logs import silenced
from tests.helpers.broker import FAST_KAFKA, shared_broker
from tests.helpers.node import Client, Node, http_get, wait_for
from tests.helpers.registry import RegistryProcess
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

AT = datetime.datetime(2026, 1, 2, 3, 4, 5, 123000, tzinfo=datetime.UTC)


def trade(token: str, **extra: object) -> dict:
    return {"token": token, "price": decimal.Decimal("12.3400"), "side": "SELL", "at": AT,
            "raw": b"\x00\xff", "venue": "xnas", "ratio": 0.5, **extra}


class RegistryCase(unittest.TestCase):
    """A node on three topics of the suite's broker, a registry, a client."""

    #: user:password the registry requires ("": none).
    credentials = ""
    #: Apicurio Registry (True) or odinws's own (False).
    apicurio = True

    def setUp(self) -> None:
        self.broker = shared_broker()
        tag = uuid.uuid4().hex[:8]
        self.avro, self.proto, self.json = (f"sr-avro-{tag}", f"sr-proto-{tag}",
                                            f"sr-json-{tag}")
        self.broker.create_topics([self.avro, self.proto, self.json], partitions=1)
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        auth_file, client_auth, node_auth = "", {}, {}
        if self.credentials:
            auth_file = os.path.join(workdir, "registry-auth")
            with open(auth_file, "w") as f:
                f.write(self.credentials + "\n")
            client_auth = {"basic.auth.user.info": self.credentials}
            node_auth = {"schema_registry.basic_auth_file": auth_file}
        log = os.path.join(workdir, "registry.log")
        if self.apicurio:
            self.registry = RegistryProcess.apicurio(os.path.join(workdir, "registry"), log,
                                                     auth_file)
        else:
            self.registry = RegistryProcess.own(self.broker.bootstrap, f"_schemas-{tag}", log)
        self.registry.up()
        self.addCleanup(self.registry.down)
        self.client = SchemaRegistryClient({"url": self.registry.url, **client_auth})
        self.producer = Producer({"bootstrap.servers": self.broker.bootstrap, "linger.ms": 0,
                                  "logger": silenced("tests.registry.librdkafka")})
        self.node = Node(workdir, self.broker.bootstrap, settings={
            **FAST_KAFKA,
            "kafka.topics": {self.avro: "trade", self.proto: "quote", self.json: "fill"},
            "kafka.topic_options": {
                self.avro: {"format": "avro", "token": "header:token_id"},
                self.proto: {"format": "protobuf", "token": "field:token",
                             "event_type": "field:side"},
                self.json: {"format": "auto", "token": "field:token",
                            "event_type": "header:kind"}},
            "schema_registry.url": self.registry.url,
            # A generous wait: on the loaded test machine a first fetch (a
            # schema and its references) can take seconds, and a record
            # whose schema has not come by then is skipped by design.
            "schema_registry.wait": 10.0, "schema_registry.retry": 1.0, **node_auth})
        self.addCleanup(self.node.stop)
        self.node.start()
        self.ws = Client(self.node.url())
        self.addCleanup(self.ws.close)

    def produce(self, topic: str, value: bytes, headers: list | None = None) -> None:
        self.producer.produce(topic, value=value, key=b"unused", headers=headers)
        self.assertEqual(self.producer.flush(20), 0)

    def next_event(self, timeout: float = 30.0) -> dict:
        before = len(self.ws.events)
        return self.ws.collect(before + 1, timeout)[before]

    def rejected(self, reason: str) -> float:
        text = http_get(self.node.port, "/metrics")[2].decode()
        pattern = r'^odinws_kafka_rejected_total\{[^}]*reason="' + reason + r'"[^}]*\} (\S+)$'
        found = re.search(pattern, text, re.M)
        return float(found.group(1)) if found else 0.0

    def rejected_reaches(self, reason: str, count: float) -> None:
        """Shards report their metrics on their own schedule: wait for the count."""
        wait_for(lambda: self.rejected(reason) >= count, 30, 0.2,
                 f"odinws_kafka_rejected_total{{reason={reason}}} {count}")
        self.assertEqual(self.rejected(reason), count)



class SchemaRegistryTests(RegistryCase):

    def test_avro_json_schema_and_an_evolution(self) -> None:
        """
        Clients get Avro and JSON Schema values as the documented JSON, on
        the channel their options name (token from a header, from a field;
        event type from a header, the topic's); a schema evolved (a field
        with a default added) while events flow is decoded with its new
        field, and the old version's records still decode.
        """
        self.ws.subscribe("odin.token.*.*")
        self.produce(self.avro, avro_serializer(self.client)(trade("IGNORED"),
                                                             context(self.avro)),
                     [("token_id", b"AV1")])
        event = self.next_event()
        self.assertEqual((event["channel"], event["data"]), (
            "odin.token.AV1.trade",
            {"token": "IGNORED", "price": "12.3400", "side": "SELL",
             "at": "2026-01-02T03:04:05.123Z", "raw": "AP8=", "venue": "xnas", "ratio": 0.5}))

        self.produce(self.json, json_serializer(self.client)({"token": "JS1", "price": 3},
                                                             context(self.json)),
                     [("kind", b"partial")])
        self.produce(self.json, b'{"token": "PLAIN", "price": 4}')  # auto: plain JSON too
        first, second = self.next_event(), self.next_event()
        self.assertEqual([(e["channel"], e["data"]) for e in (first, second)], [
            ("odin.token.JS1.partial", {"token": "JS1", "price": 3}),
            ("odin.token.PLAIN.fill", {"token": "PLAIN", "price": 4})])

        evolved = avro_serializer(self.client, AVRO_TRADE_V2)
        self.produce(self.avro, evolved(trade("X", fee="0.1%"), context(self.avro)),
                     [("token_id", b"AV2")])
        self.produce(self.avro, avro_serializer(self.client)(trade("X"), context(self.avro)),
                     [("token_id", b"AV3")])
        new, old = self.next_event(), self.next_event()
        self.assertEqual((new["channel"], new["data"]["fee"]), ("odin.token.AV2.trade", "0.1%"))
        self.assertEqual(old["channel"], "odin.token.AV3.trade")
        self.assertNotIn("fee", old["data"])
        self.assertEqual(self.client.get_versions(f"{self.avro}-value"), [1, 2])

    def test_avro_named_reference(self) -> None:
        """
        An Avro schema naming a type registered under a subject of its own
        (a schema reference) is decoded with that type: the node fetched
        the reference from the registry.
        """
        self.ws.subscribe("odin.token.*.trade")
        self.client.register_schema("odin-venue", Schema(AVRO_VENUE, "AVRO"))
        schema = Schema(AVRO_FILL, "AVRO", [SchemaReference("odin.test.Venue", "odin-venue", 1)])
        value = AvroSerializer(self.client, schema)({"token": "F", "venue": {"mic": "XNAS"}},
                                                    context(self.avro))
        self.produce(self.avro, value, [("token_id", b"REF1")])
        event = self.next_event()
        self.assertEqual((event["channel"], event["data"]),
                         ("odin.token.REF1.trade", {"token": "F", "venue": {"mic": "XNAS"}}))

    def test_bad_values_are_counted_not_delivered(self) -> None:
        """
        A value with a schema id the registry does not know and a value cut
        short are skipped and counted by reason; the next good value of the
        same partition is the next thing a client receives.
        """
        self.ws.subscribe("odin.token.*.trade")
        good = avro_serializer(self.client)(trade("T"), context(self.avro))
        self.produce(self.avro, b"\x00\x00\x00\x27\x0f" + good[5:], [("token_id", b"UNK")])
        self.produce(self.avro, good[:12], [("token_id", b"CUT")])
        self.produce(self.avro, good, [("token_id", b"GOOD")])
        self.assertEqual(self.next_event()["channel"], "odin.token.GOOD.trade")
        self.rejected_reaches("unknown_schema", 1.0)
        self.rejected_reaches("corrupt_value", 1.0)

    def test_registry_down_and_back(self) -> None:
        """
        With the registry down, records of a schema the node already has
        are delivered, those of a schema it has not are skipped and counted
        (registry_unavailable) and /health says degraded registry_unreachable
        while staying 200; with the registry back, that schema's records
        are delivered again.
        """
        self.ws.subscribe("odin.token.*.trade")
        v1 = avro_serializer(self.client)
        self.produce(self.avro, v1(trade("A"), context(self.avro)), [("token_id", b"KNOWN1")])
        self.assertEqual(self.next_event()["channel"], "odin.token.KNOWN1.trade")
        v2 = avro_serializer(self.client, AVRO_TRADE_V2)
        new_value = v2(trade("B", fee="x"), context(self.avro))  # registered now

        self.registry.down()
        self.produce(self.avro, new_value, [("token_id", b"NEW1")])
        self.produce(self.avro, v1(trade("C"), context(self.avro)), [("token_id", b"KNOWN2")])
        self.assertEqual(self.next_event()["channel"], "odin.token.KNOWN2.trade")
        self.rejected_reaches("registry_unavailable", 1.0)

        def degraded() -> dict | None:
            status, body = self.node.health()
            return body if "registry_unreachable" in body.get("degraded", ()) else None
        body = wait_for(degraded, 30, 0.2, "/health degraded registry_unreachable")
        self.assertEqual(self.node.health()[0], 200)
        self.assertEqual(body["shards"][0]["registry"]["state"], "unreachable")

        self.registry.up()
        # The schema is asked for again schema_registry.retry (1 s) after
        # the failure: a record of it produced before then is skipped too.
        deadline = time.monotonic() + 60
        n = 0
        while True:
            n += 1
            self.produce(self.avro, new_value, [("token_id", b"NEW%d" % (n + 1))])
            try:
                event = self.next_event(timeout=3)
                break
            except AssertionError:
                self.assertLess(time.monotonic(), deadline, "no record of the new schema came")
        self.assertEqual(event["data"]["fee"], "x")
        self.assertEqual(event["channel"], f"odin.token.NEW{n + 1}.trade")


class ProtobufTests(RegistryCase):

    apicurio = False

    def test_protobuf(self) -> None:
        """
        A Protobuf value (importing a well-known type) reaches clients as
        its canonical JSON, on the channel named by a field (the token) and
        by an enum field (the event type).
        """
        self.ws.subscribe("odin.token.*.*")
        message = ProtobufTrade(token="PB1", qty=9, side=1, exchange="xnys", price=1.25)
        self.produce(self.proto, protobuf_serializer(self.client)(message, context(self.proto)))
        event = self.next_event()
        self.assertEqual((event["channel"], event["data"]), (
            "odin.token.PB1.BUY",
            {"token": "PB1", "qty": "9", "raw": "", "side": "BUY", "exchange": "xnys",
             "price": 1.25}))

    def test_protobuf_reference_to_another_subject(self) -> None:
        """
        A Protobuf file importing another file, which confluent-kafka's
        serializer registers under a subject of its own (a reference), is
        decoded with the imported message: the node fetched the reference.
        """
        self.ws.subscribe("odin.token.*.*")
        message = ProtobufFill(token="PB2")
        message.venue.mic = "XNAS"
        serializer = protobuf_serializer(self.client, ProtobufFill)
        self.produce(self.proto, serializer(message, context(self.proto)))
        self.assertIn("odin_test_venue.proto", self.client.get_subjects())
        event = self.next_event()
        self.assertEqual((event["channel"], event["data"]),
                         ("odin.token.PB2.quote", {"token": "PB2", "venue": {"mic": "XNAS"}}))


class RegistryAuthTests(RegistryCase):

    credentials = "odinws:s3cret"

    def test_basic_auth_from_a_file(self) -> None:
        """
        A registry that requires basic authentication (it answers 401
        without it) serves the node, which reads the credentials from
        schema_registry.basic_auth_file: the value is decoded and delivered.
        """
        status, _, _ = http_get(self.registry.port, self.registry.path("/schemas/ids/1"))
        self.assertEqual(status, 401)
        self.ws.subscribe("odin.token.*.trade")
        self.produce(self.avro, avro_serializer(self.client)(trade("T"), context(self.avro)),
                     [("token_id", b"AUTH1")])
        event = self.next_event()
        self.assertEqual((event["channel"], event["data"]["price"]),
                         ("odin.token.AUTH1.trade", "12.3400"))
