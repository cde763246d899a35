"""
Schemas of the Schema Registry tests, in each format, and confluent-kafka
serializers for them: the unit tests (with confluent-kafka's mock registry
client) and the integration tests (with a registry over HTTP) encode
values exactly as a producer in production would.
"""

from __future__ import annotations

import json
from typing import Any

from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.schema_registry.json_schema import JSONSerializer
from confluent_kafka.schema_registry.protobuf import ProtobufSerializer
from confluent_kafka.serialization import MessageField, SerializationContext
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, timestamp_pb2

#: A trade in Avro, every type of the JSON mapping in it.
AVRO_TRADE = json.dumps({
    "type": "record", "name": "Trade", "namespace": "odin.test", "fields": [
        {"name": "token", "type": "string"},
        {"name": "price", "type": {"type": "bytes", "logicalType": "decimal",
                                   "precision": 18, "scale": 4}},
        {"name": "side", "type": {"type": "enum", "name": "Side", "symbols": ["BUY", "SELL"]}},
        {"name": "at", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "raw", "type": "bytes"},
        {"name": "venue", "type": ["null", "string", "long"]},
        {"name": "ratio", "type": "double"},
    ]})

#: The same, one field added with a default (a compatible evolution).
AVRO_TRADE_V2 = json.dumps({
    **json.loads(AVRO_TRADE),
    "fields": [*json.loads(AVRO_TRADE)["fields"],
               {"name": "fee", "type": "string", "default": "none"}]})

JSON_TRADE = json.dumps({
    "$schema": "http://json-schema.org/draft-07/schema#", "title": "Trade", "type": "object",
    "properties": {"token": {"type": "string"}, "price": {"type": "number"},
                   "kind": {"type": "string"}},
    "required": ["token", "price"]})


def _protobuf_trade() -> Any:
    """A compiled-at-runtime Protobuf message class (no protoc here)."""
    f = descriptor_pb2.FileDescriptorProto(name="odin_test_trade.proto", package="odin.test",
                                           syntax="proto3")
    f.dependency.append("google/protobuf/timestamp.proto")
    side = f.enum_type.add(name="Side")
    side.value.add(name="SIDE_UNKNOWN", number=0)
    side.value.add(name="BUY", number=1)
    side.value.add(name="SELL", number=2)
    m = f.message_type.add(name="Trade")
    t = descriptor_pb2.FieldDescriptorProto
    opt = t.LABEL_OPTIONAL
    m.field.add(name="token", number=1, type=t.TYPE_STRING, label=opt)
    m.field.add(name="qty", number=2, type=t.TYPE_INT64, label=opt)
    m.field.add(name="raw", number=3, type=t.TYPE_BYTES, label=opt)
    m.field.add(name="side", number=4, type=t.TYPE_ENUM, type_name=".odin.test.Side", label=opt)
    m.field.add(name="at", number=5, type=t.TYPE_MESSAGE,
                type_name=".google.protobuf.Timestamp", label=opt)
    m.oneof_decl.add(name="venue")
    m.field.add(name="exchange", number=6, type=t.TYPE_STRING, label=opt, oneof_index=0)
    m.field.add(name="pool", number=7, type=t.TYPE_STRING, label=opt, oneof_index=0)
    m.field.add(name="price", number=8, type=t.TYPE_DOUBLE, label=opt)
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(timestamp_pb2.DESCRIPTOR.serialized_pb)
    pool.AddSerializedFile(f.SerializeToString())
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("odin.test.Trade"))


ProtobufTrade = _protobuf_trade()

#: An Avro type registered under a subject of its own, and a schema naming it.
AVRO_VENUE = json.dumps({"type": "record", "name": "Venue", "namespace": "odin.test",
                         "fields": [{"name": "mic", "type": "string"}]})
AVRO_FILL = json.dumps({"type": "record", "name": "Fill", "namespace": "odin.test",
                        "fields": [{"name": "token", "type": "string"},
                                   {"name": "venue", "type": "odin.test.Venue"}]})


def _protobuf_fill() -> Any:
    """
    A message whose field's type comes from another file (odin_test_venue.proto,
    itself importing a well-known type): confluent-kafka's serializer
    registers that file under a subject of its own and refers to it.
    """
    t = descriptor_pb2.FieldDescriptorProto
    opt = t.LABEL_OPTIONAL
    venue = descriptor_pb2.FileDescriptorProto(name="odin_test_venue.proto",
                                               package="odin.test.ref", syntax="proto3")
    venue.dependency.append("google/protobuf/timestamp.proto")
    v = venue.message_type.add(name="Venue")
    v.field.add(name="mic", number=1, type=t.TYPE_STRING, label=opt)
    v.field.add(name="opened", number=2, type=t.TYPE_MESSAGE,
                type_name=".google.protobuf.Timestamp", label=opt)
    fill = descriptor_pb2.FileDescriptorProto(name="odin_test_fill.proto", package="odin.test",
                                              syntax="proto3")
    fill.dependency.append("odin_test_venue.proto")
    m = fill.message_type.add(name="Fill")
    m.field.add(name="token", number=1, type=t.TYPE_STRING, label=opt)
    m.field.add(name="venue", number=2, type=t.TYPE_MESSAGE,
                type_name=".odin.test.ref.Venue", label=opt)
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(timestamp_pb2.DESCRIPTOR.serialized_pb)
    pool.AddSerializedFile(venue.SerializeToString())
    pool.AddSerializedFile(fill.SerializeToString())
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("odin.test.Fill"))


ProtobufFill = _protobuf_fill()


def context(topic: str) -> SerializationContext:
    return SerializationContext(topic, MessageField.VALUE)


def avro_serializer(client: Any, schema: str = AVRO_TRADE) -> Any:
    return AvroSerializer(client, schema)


def json_serializer(client: Any) -> Any:
    return JSONSerializer(JSON_TRADE, client)


def protobuf_serializer(client: Any, message: Any = ProtobufTrade) -> Any:
    return ProtobufSerializer(message, client, {"use.deprecated.format": False})
