"""
What decoding a record's value gives (L{Decoded}), and what the plain JSON
path (L{odin_ws.shard.kafka.valueformats}) and the registry's wire formats
(L{odin_ws.shard.kafka.wireformats}) share to get there.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from odin_ws.common.topicoptions import ValueFormat

#: The registry's schemaType of each format (Avro is the default: absent).
TYPES = {ValueFormat.AVRO: "AVRO", ValueFormat.PROTOBUF: "PROTOBUF",
         ValueFormat.JSONSCHEMA: "JSON"}
#: The first byte of Confluent's wire format.
MAGIC = 0


def _reject_constant(name: str) -> None:
    # json.loads accepts NaN/Infinity/-Infinity, which are not JSON: a browser's
    # JSON.parse would choke on the envelope.
    raise ValueError(f"{name} is not JSON")


#: One decoder for every value: json.loads with parse_constant builds a new
#: one per call, which took more than half of its time on an event (~8 us
#: against ~3 us; docs/performance.md, "Cost per event"). Reentrant: its C
#: scanner runs under the GIL and keeps nothing across calls.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


# What JSONDecoder.decode uses: its C scanner, and json.decoder.WHITESPACE.
_SCAN: Callable[[str, int], tuple[Any, int]] = _DECODER.scan_once  # type: ignore[attr-defined]
# It always matches (maybe nothing): typed so.
_SPACE: Callable[[str, int], re.Match[str]] = re.compile(r"[ \t\n\r]*").match  # type: ignore[assignment]


def strict_json(text: bytes) -> Any:
    """Parse UTF-8 JSON, refusing NaN and the infinities; ValueError/RecursionError otherwise."""
    s = text.decode("utf-8")
    if s.startswith("\ufeff"):    # as json.loads refuses it
        raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", s, 0)
    # JSONDecoder.decode and its raw_decode (Python 3.11's json/decoder.py),
    # inlined: two Python frames less per value, the same errors.
    try:
        value, end = _SCAN(s, _SPACE(s, 0).end())
    except StopIteration as err:
        raise json.JSONDecodeError("Expecting value", s, err.value) from None
    end = _SPACE(s, end).end()
    if end != len(s):
        raise json.JSONDecodeError("Extra data", s, end)
    return value


@dataclass(frozen=True, slots=True)
class Decoded:
    """A value ready for the envelope: its JSON, and its fields when it is an object."""

    json: bytes
    fields: dict[str, Any] | None
