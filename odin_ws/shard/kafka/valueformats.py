"""
A record's value -> the JSON of the envelope's C{data}, by the topic's
format (C{kafka.topic_options}): plain JSON as it is, or Confluent's wire
format (magic byte 0, a 4-byte schema id, for Protobuf the message
indexes, then the encoded value) decoded with the schema from the
registry (L{odin_ws.shard.kafka.schemasource}) by confluent-kafka's
deserializers (Avro, JSON Schema) or protobuf's own dynamic messages
(confluent-kafka's C{ProtobufDeserializer} needs a compiled message class:
odinws knows only the registry's descriptor).

Runs on the consumer thread (and the warm-up's). A value that cannot be
decoded yields one of L{UNDECODABLE} and nothing else: it is never
delivered half-decoded, and no exception of a decoder leaves this module.
"""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
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
from odin_ws.shard.kafka.schemasource import Dependency, Missing, SchemaSource

#: Reasons (C{odinws_kafka_rejected}) a value of a registry format is skipped.
UNDECODABLE = ("not_wire_format", "unknown_schema", "registry_unavailable",
               "schema_references", "schema_type_mismatch", "corrupt_value")
#: The registry's schemaType of each format (Avro is the default: absent).
_TYPES = {ValueFormat.AVRO: "AVRO", ValueFormat.PROTOBUF: "PROTOBUF",
          ValueFormat.JSONSCHEMA: "JSON"}
_MAGIC = 0
# Seconds between two audit lines of one reason.
AUDIT_EVERY = 10.0


def _reject_constant(name: str) -> None:
    # json.loads accepts NaN/Infinity/-Infinity, which are not JSON: a browser's
    # JSON.parse would choke on the envelope.
    raise ValueError(f"{name} is not JSON")


#: One decoder for every value: json.loads with parse_constant builds a new
#: one per call, which took more than half of its time on an event (~8 us
#: against ~3 us; docs/performance.md, "Cost per event"). Reentrant: its C
#: scanner runs under the GIL and keeps nothing across calls.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def strict_json(text: bytes) -> Any:
    """Parse UTF-8 JSON, refusing NaN and the infinities; ValueError/RecursionError otherwise."""
    s = text.decode("utf-8")
    if s.startswith("\ufeff"):    # as json.loads refuses it
        raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", s, 0)
    return _DECODER.decode(s)


@dataclass(frozen=True, slots=True)
class Decoded:
    """A value ready for the envelope: its JSON, and its fields when it is an object."""

    json: bytes
    fields: dict[str, Any] | None


class UndecodableAudit:
    """
    The audit lines of undecodable records: the first of each reason at
    once, then at most one per L{AUDIT_EVERY} seconds saying how many were
    skipped since (a stream of bad records must not flood the audit log).
    Called from the consumer and warm-up threads.
    """

    def __init__(self, write: Callable[..., None], clock: Callable[[], float] = time.monotonic):
        self._write = write
        self._clock = clock
        self._lock = threading.Lock()
        # reason -> (when the last line was written, records since)
        self._last: dict[str, tuple[float, int]] = {}

    def __call__(self, reason: str, topic: str, partition: int, offset: int, detail: str) -> None:
        now = self._clock()
        with self._lock:
            last, since = self._last.get(reason, (-AUDIT_EVERY, 0))
            if now - last < AUDIT_EVERY:
                self._last[reason] = (last, since + 1)
                return
            self._last[reason] = (now, 0)
        self._write("Kafka {topic}[{partition}]@{offset} skipped, value not decodable: "
                    "{reason} ({detail}); {since} more for this reason since the last line",
                    topic=topic, partition=partition, offset=offset, reason=reason,
                    detail=detail, since=since)


class ValueDecoder:
    """
    Decodes values by format. Without a L{SchemaSource} (no registry
    configured) only JSON is accepted: the loader refuses other formats then.

    @param audit: called with (reason, topic, partition, offset, detail) for
        every undecodable value (an L{UndecodableAudit}).
    """

    def __init__(self, source: SchemaSource | None,
                 audit: Callable[[str, str, int, int, str], None] | None = None):
        self._source = source
        self._audit = audit
        self._avro: AvroDeserializer | None = None
        self._json: JSONDeserializer | None = None
        # (schema id, message indexes) -> the message class.
        self._protobuf: dict[tuple[int, tuple[int, ...]], Any] = {}
        if source is not None:
            client = source.client("")
            # No subject: values are read with their writer's schema, found
            # by id in the cache L{SchemaSource} filled (a subject would make
            # the deserializers ask the registry for it, on this thread).
            conf = {"subject.name.strategy": _no_subject}
            self._avro = AvroDeserializer(client, conf=conf)
            self._json = JSONDeserializer(None, schema_registry_client=client, conf=conf,
                                          json_decode=_strict_json_text)

    def decode(self, fmt: ValueFormat, value: bytes, topic: str, partition: int,
               offset: int) -> Decoded | str:
        """The value's JSON, or the reason it is skipped."""
        if fmt is ValueFormat.JSON or (fmt is ValueFormat.AUTO and value[0] != _MAGIC):
            return _plain(value)
        result = self._wire(fmt, value)
        if isinstance(result, tuple):
            reason, detail = result
            if self._audit is not None:
                self._audit(reason, topic, partition, offset, detail)
            return reason
        return result

    def _wire(self, fmt: ValueFormat, value: bytes) -> Decoded | tuple[str, str]:
        source = self._source
        if source is None or len(value) < 5 or value[0] != _MAGIC:
            return "not_wire_format", f"first byte {value[0]:#04x}, {len(value)} bytes"
        schema_id = int.from_bytes(value[1:5], "big")
        schema = source.schema(schema_id)
        if isinstance(schema, Missing):
            return schema.value, f"schema {schema_id}"
        kind = schema.schema_type or "AVRO"
        if fmt is not ValueFormat.AUTO and kind != _TYPES[fmt]:
            return "schema_type_mismatch", f"schema {schema_id} is {kind}, the topic's {fmt}"
        try:
            if kind == "AVRO":
                assert self._avro is not None
                return Decoded(jsonmapping.to_json(data := self._avro(value)),
                               data if isinstance(data, dict) else None)
            if kind == "JSON":
                assert self._json is not None
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
            assert self._source is not None
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


def _plain(value: bytes) -> Decoded | str:
    try:
        data = strict_json(value)
    except (ValueError, RecursionError):
        # ValueError covers UnicodeDecodeError and JSONDecodeError (a BOM
        # included); RecursionError is a value nested thousands deep.
        return "invalid_json"
    # The value parsed as strict UTF-8 JSON, so its bytes are a valid JSON
    # value as they are: embed them without re-serializing.
    return Decoded(value.strip(b" \t\r\n"), data if isinstance(data, dict) else None)


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
