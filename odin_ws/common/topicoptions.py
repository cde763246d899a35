"""
How the records of one topic are read (C{kafka.topic_options}): the value's
format, where the token id comes from and where the event type comes from.

Defined here, in common, because the loader validates them (a typo fails
the start with one line naming the key) and the shard's record mapper uses
the parsed form; both must read the same text the same way.

A source is written C{key}, C{topic}, C{header:NAME} or C{field:NAME}
(a top-level field of the decoded value).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


class ValueFormat(enum.StrEnum):
    """A topic's value format (the values are the configuration's words)."""

    JSON = "json"
    AVRO = "avro"
    PROTOBUF = "protobuf"
    JSONSCHEMA = "jsonschema"
    #: Confluent's wire format when the value starts with its magic byte 0,
    #: else plain JSON (a JSON text never starts with a NUL byte).
    AUTO = "auto"


class Origin(enum.StrEnum):
    """Where a token id or an event type is read."""

    KEY = "key"
    TOPIC = "topic"
    HEADER = "header"
    FIELD = "field"


@dataclass(frozen=True, slots=True)
class Source:
    """One source: its origin and, for a header or a field, its name."""

    origin: Origin
    name: str = ""

    @classmethod
    def parse(cls, text: str, allowed: tuple[Origin, ...]) -> Source:
        """C{key}, C{topic}, C{header:NAME}, C{field:NAME}; ValueError otherwise."""
        origin, sep, name = text.partition(":")
        try:
            kind = Origin(origin)
        except ValueError:
            kind = None
        if kind is None or kind not in allowed:
            words = ", ".join(f"{o.value}:NAME" if o in (Origin.HEADER, Origin.FIELD) else o.value
                              for o in allowed)
            raise ValueError(f"must be one of {words}, got {text!r}")
        named = kind in (Origin.HEADER, Origin.FIELD)
        if named and not name:
            raise ValueError(f"{kind.value}: needs a name ({kind.value}:NAME), got {text!r}")
        if not named and sep:
            raise ValueError(f"{kind.value} takes no name, got {text!r}")
        return cls(kind, name)

    def __str__(self) -> str:
        return f"{self.origin.value}:{self.name}" if self.name else self.origin.value


TOKEN_ORIGINS = (Origin.KEY, Origin.HEADER, Origin.FIELD)
EVENT_TYPE_ORIGINS = (Origin.TOPIC, Origin.HEADER, Origin.FIELD)
#: The keys of one topic's entry.
KEYS = ("format", "token", "event_type")


@dataclass(frozen=True, slots=True)
class TopicOptions:
    """
    One topic's reading. C{event_type}: a header or field, when the record
    has it (not null), overrides the topic's event type; otherwise the
    topic's applies (as C{kafka.event_type_field} always did).
    """

    format: ValueFormat
    token: Source
    event_type: Source

    @property
    def needs_registry(self) -> bool:
        return self.format is not ValueFormat.JSON


def defaults(token_field: str, event_type_field: str) -> TopicOptions:
    """A topic without an entry: JSON, and the global C{kafka.token_field}/C{event_type_field}."""
    return TopicOptions(
        ValueFormat.JSON,
        Source(Origin.FIELD, token_field) if token_field else Source(Origin.KEY),
        Source(Origin.FIELD, event_type_field) if event_type_field else Source(Origin.TOPIC))


def parse(entry: Mapping[str, Any], base: TopicOptions) -> TopicOptions:
    """
    A topic's entry of C{kafka.topic_options} over C{base} (what the topic
    would have without one). ValueError naming the key on any mistake.
    """
    unknown = sorted(set(entry) - set(KEYS))
    if unknown:
        raise ValueError(f"{unknown[0]}: unknown (known: {', '.join(KEYS)})")
    fmt, token, event_type = base.format, base.token, base.event_type
    for key, value in entry.items():
        if not isinstance(value, str):
            raise ValueError(f"{key}: expected a string, got {value!r}")
        try:
            if key == "format":
                fmt = ValueFormat(value)
            elif key == "token":
                token = Source.parse(value, TOKEN_ORIGINS)
            else:
                event_type = Source.parse(value, EVENT_TYPE_ORIGINS)
        except ValueError as e:
            if key == "format":
                raise ValueError(f"format: must be one of "
                                 f"{', '.join(f.value for f in ValueFormat)}, got {value!r}") from None
            raise ValueError(f"{key}: {e}") from None
    return TopicOptions(fmt, token, event_type)


def for_topics(topics: Mapping[str, str], options: Mapping[str, Any], token_field: str,
               event_type_field: str) -> dict[str, TopicOptions]:
    """Every configured topic's options; ValueError C{"topic.key: problem"} on a mistake."""
    base = defaults(token_field, event_type_field)
    for topic in options:
        if topic not in topics:
            raise ValueError(f"{topic}: not one of kafka.topics")
    out = {}
    for topic in topics:
        entry = options.get(topic)
        if entry is None:
            out[topic] = base
            continue
        if not isinstance(entry, Mapping):
            raise ValueError(f"{topic}: expected a mapping of {', '.join(KEYS)}, got {entry!r}")
        try:
            out[topic] = parse(entry, base)
        except ValueError as e:
            raise ValueError(f"{topic}.{e}") from None
    return out
