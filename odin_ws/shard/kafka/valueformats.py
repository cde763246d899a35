"""
A record's value -> the JSON of the envelope's C{data}, by the topic's
format (C{kafka.topic_options}): plain JSON as it is, or Confluent's wire
format (magic byte 0, a 4-byte schema id, for Protobuf the message
indexes, then the encoded value) decoded with the schema from the
registry (L{odin_ws.shard.kafka.schemasource}) by confluent-kafka's
deserializers (Avro, JSON Schema) or protobuf's own dynamic messages
(confluent-kafka's C{ProtobufDeserializer} needs a compiled message class:
odinws knows only the registry's descriptor).

The registry's formats are in L{odin_ws.shard.kafka.wireformats}, imported
only when a registry is configured: confluent-kafka's registry client,
its deserializers and protobuf are a third of a shard's imports, and a
restarted shard's start is its clients' (and its partitions') wait.

Runs on the consumer thread (and the warm-up's). A value that cannot be
decoded yields one of L{UNDECODABLE} and nothing else: it is never
delivered half-decoded, and no exception of a decoder leaves this module.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from odin_ws.common.topicoptions import ValueFormat
from odin_ws.shard.kafka.decoded import MAGIC, Decoded, strict_json

if TYPE_CHECKING:
    from odin_ws.shard.kafka.schemasource import SchemaSource
    from odin_ws.shard.kafka.wireformats import WireDecoder

#: Reasons (C{odinws_kafka_rejected}) a value of a registry format is skipped.
UNDECODABLE = ("not_wire_format", "unknown_schema", "registry_unavailable",
               "schema_references", "schema_type_mismatch", "corrupt_value")
# Seconds between two audit lines of one reason.
AUDIT_EVERY = 10.0


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
        self._audit = audit
        self._wire: WireDecoder | None = None
        if source is not None:
            from odin_ws.shard.kafka.wireformats import WireDecoder
            self._wire = WireDecoder(source)

    def decode(self, fmt: ValueFormat, value: bytes, topic: str, partition: int,
               offset: int) -> Decoded | str:
        """The value's JSON, or the reason it is skipped."""
        if fmt is ValueFormat.JSON or (fmt is ValueFormat.AUTO and value[0] != MAGIC):
            return _plain(value)
        if self._wire is None:
            result: Decoded | tuple[str, str] = (
                "not_wire_format", f"first byte {value[0]:#04x}, {len(value)} bytes")
        else:
            result = self._wire.decode(fmt, value)
        if isinstance(result, tuple):
            reason, detail = result
            if self._audit is not None:
                self._audit(reason, topic, partition, offset, detail)
            return reason
        return result


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
