"""
The JSON that clients receive for an Avro or JSON Schema value decoded
from the registry's wire format: one documented, stable mapping
(docs/operations.md, "The JSON of decoded values"), so that the same value
always gives the same text.

Avro values arrive as fastavro gives them (confluent-kafka's
C{AvroDeserializer} reads with fastavro, logical types converted). Protobuf
messages use protobuf's own canonical JSON mapping (L{protobuf_json}), to
which the choices here are aligned (base64 bytes, "NaN"/"Infinity",
RFC 3339 timestamps with 0, 3 or 6 fractional digits).
"""

from __future__ import annotations

import base64
import datetime
import decimal
import json
import math
import uuid
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message

_UTC = datetime.UTC


def _fraction(micros: int) -> str:
    """0, 3 or 6 digits, as protobuf's Timestamp mapping writes them."""
    if not micros:
        return ""
    if micros % 1000 == 0:
        return f".{micros // 1000:03d}"
    return f".{micros:06d}"


def _timestamp(value: datetime.datetime) -> str:
    if value.tzinfo is not None:
        value = value.astimezone(_UTC)
        zone = "Z"
    else:  # Avro local-timestamp-*: no zone to name
        zone = ""
    return value.strftime("%Y-%m-%dT%H:%M:%S") + _fraction(value.microsecond) + zone


def _default(value: Any) -> Any:
    """What json cannot write by itself."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, decimal.Decimal):
        # Exact, scale kept ("12.30"): a JSON number would go through a double.
        return str(value)
    if isinstance(value, datetime.datetime):
        return _timestamp(value)
    if isinstance(value, datetime.date):
        return value.isoformat()
    if isinstance(value, datetime.time):
        return value.strftime("%H:%M:%S") + _fraction(value.microsecond)
    if isinstance(value, uuid.UUID):
        return str(value)
    raise TypeError(f"{type(value).__name__} has no JSON mapping")


def _finite(value: Any) -> Any:
    """The value with NaN and infinities as protobuf's mapping writes them (strings)."""
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return value
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def to_json(value: Any) -> bytes:
    """
    A decoded value as compact UTF-8 JSON (records and maps as objects,
    enums as their symbol, unions as the value of their branch).
    """
    try:
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False,
                          default=_default)
    except ValueError:  # a NaN or an infinity somewhere: rare, so mapped only then
        text = json.dumps(_finite(value), separators=(",", ":"), ensure_ascii=False,
                          allow_nan=False, default=_default)
    return text.encode("utf-8")


def protobuf_dict(message: Message) -> dict[str, Any]:
    """
    A message as protobuf's canonical JSON mapping gives it, with the
    .proto field names (not lowerCamelCase: a token field is named as in
    the schema) and fields at their default value included (a stable set
    of keys; a oneof shows only its member that is set).
    """
    return json_format.MessageToDict(message, preserving_proto_field_name=True,
                                     always_print_fields_with_no_presence=True)
