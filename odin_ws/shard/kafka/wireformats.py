"""
The registry's wire formats (L{WireDecoder}): Confluent's wire format
(magic byte 0, a 4-byte schema id, for Protobuf the message indexes, then
the encoded value) decoded with the schema from the registry
(L{odin_ws.shard.kafka.schemasource}) by confluent-kafka's deserializers
(Avro, JSON Schema) or protobuf's own dynamic messages (confluent-kafka's
C{ProtobufDeserializer} needs a compiled message class: odinws knows only
the registry's descriptor).

Imported by L{odin_ws.shard.kafka.valueformats} only when a registry is
configured. Runs on the consumer thread (and the warm-up's); no exception
of a decoder leaves this module.
"""

from __future__ import annotations

import base64
import io
from typing import Any

from confluent_kafka.schema_registry import Schema
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.schema_registry.common.serde import SchemaId
from confluent_kafka.schema_registry.json_schema import JSONDeserializer
from google.protobuf import (  # noqa: F401  (the imports register Google's well-known types)
    any_pb2,
    descriptor_pb2,
    descriptor_pool,
    duration_pb2,
    empty_pb2,
    message_factory,
    struct_pb2,
    timestamp_pb2,
    wrappers_pb2,
)
from google.protobuf.descriptor import Descriptor

from odin_ws.common.topicoptions import ValueFormat
from odin_ws.shard.kafka import jsonmapping
from odin_ws.shard.kafka.decoded import MAGIC, TYPES, Decoded, strict_json
from odin_ws.shard.kafka.schemasource import Dependency, Missing, SchemaSource


class WireDecoder:
    """The values of the registry's formats, with schemas from C{source}."""

    def __init__(self, source: SchemaSource):
        self._source = source
        # (schema id, message indexes) -> the message class.
        self._protobuf: dict[tuple[int, tuple[int, ...]], Any] = {}
        client = source.client("")
        # No subject: values are read with their writer's schema, found
        # by id in the cache L{SchemaSource} filled (a subject would make
        # the deserializers ask the registry for it, on this thread).
        conf = {"subject.name.strategy": _no_subject}
        self._avro = AvroDeserializer(client, conf=conf)
        self._json = JSONDeserializer(None, schema_registry_client=client, conf=conf,
                                      json_decode=_strict_json_text)

    def decode(self, fmt: ValueFormat, value: bytes) -> Decoded | tuple[str, str]:
        """The value's JSON, or (the reason it is skipped, a detail)."""
        source = self._source
        if len(value) < 5 or value[0] != MAGIC:
            return "not_wire_format", f"first byte {value[0]:#04x}, {len(value)} bytes"
        schema_id = int.from_bytes(value[1:5], "big")
        schema = source.schema(schema_id)
        if isinstance(schema, Missing):
            return schema.value, f"schema {schema_id}"
        kind = schema.schema_type or "AVRO"
        if fmt is not ValueFormat.AUTO and kind != TYPES[fmt]:
            return "schema_type_mismatch", f"schema {schema_id} is {kind}, the topic's {fmt}"
        try:
            if kind == "AVRO":
                return Decoded(jsonmapping.to_json(data := self._avro(value)),
                               data if isinstance(data, dict) else None)
            if kind == "JSON":
                data = self._json(value)
                return Decoded(jsonmapping.to_json(data), data if isinstance(data, dict) else None)
            if kind == "PROTOBUF":
                return self._protobuf_value(schema_id, value)
        except Exception as e:
            # Whatever a decoder raises on a value it cannot read (fastavro's
            # EOFError/ValueError, SerializationError, jsonschema's
            # ValidationError, protobuf's DecodeError, ...): the record, not
            # the shard, is broken.
            return "corrupt_value", f"schema {schema_id}: {type(e).__name__}: {e}"[:300]
        return "schema_type_mismatch", f"schema {schema_id} is {kind}: not supported"

    def _protobuf_value(self, schema_id: int, value: bytes) -> Decoded | tuple[str, str]:
        ident = SchemaId("PROTOBUF")
        payload = ident.from_bytes(io.BytesIO(value))
        indexes = tuple(ident.message_indexes or [0])
        cls = self._protobuf.get((schema_id, indexes))
        if cls is None:
            serialized = self._source.schema(schema_id, "serialized")
            if isinstance(serialized, Missing):
                return serialized.value, f"schema {schema_id} (serialized)"
            dependencies = self._source.dependencies(schema_id, "serialized")
            cls = message_factory.GetMessageClass(
                _message_descriptor(serialized, dependencies, indexes))
            self._protobuf[(schema_id, indexes)] = cls
        message = cls()
        message.ParseFromString(payload.read())
        data = jsonmapping.protobuf_dict(message)
        return Decoded(jsonmapping.to_json(data), data)


def _no_subject(ctx: object, record_name: object) -> None:
    return None


def _strict_json_text(text: bytes | str) -> Any:
    return strict_json(text if isinstance(text, bytes) else text.encode("utf-8"))


def _message_descriptor(schema: Schema, dependencies: tuple[Dependency, ...],
                        indexes: tuple[int, ...]) -> Descriptor:
    """
    The message a Protobuf value names by its indexes (the first is a
    top-level message of the file, each next one a nested message of the
    previous), from the registry's serialized file descriptor and those of
    its references (other subjects' files, each before the files importing
    it). Imports of Google's well-known types are served from protobuf's
    own pool; an import found in neither fails the value (corrupt_value,
    saying which).
    """
    pool = descriptor_pool.DescriptorPool()
    known = descriptor_pool.Default()
    added: set[str] = set()
    proto = descriptor_pb2.FileDescriptorProto()
    for item in (*(d.schema for d in dependencies), schema):
        serialized = base64.standard_b64decode(item.schema_str or "")
        proto = descriptor_pb2.FileDescriptorProto()
        proto.ParseFromString(serialized)
        for dependency in proto.dependency:
            if dependency not in added:
                pool.AddSerializedFile(known.FindFileByName(dependency).serialized_pb)
                added.add(dependency)
        pool.AddSerializedFile(serialized)
        added.add(proto.name)
    if not indexes or not 0 <= indexes[0] < len(proto.message_type):
        raise ValueError(f"message index {list(indexes)} not in the schema")
    prefix = f"{proto.package}." if proto.package else ""
    desc: Descriptor = pool.FindMessageTypeByName(prefix + proto.message_type[indexes[0]].name)
    for i in indexes[1:]:
        if not 0 <= i < len(desc.nested_types):
            raise ValueError(f"message index {list(indexes)} not in the schema")
        desc = desc.nested_types[i]
    return desc
