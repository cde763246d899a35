"""
The simulator's events as Avro in Confluent's wire format
(C{odinws-simulate --registry URL}, C{python -m odinws_tools.demo --avro}):
one record schema per event type, registered under C{<topic>-value} by
confluent-kafka's C{AvroSerializer} at the first event, as a producer of
a team that runs a Schema Registry would write them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any

from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext


def _record(name: str, fields: list[tuple[str, Any]]) -> str:
    return json.dumps({"type": "record", "name": name, "namespace": "odin.demo",
                       "fields": [{"name": n, "type": t} for n, t in fields]})


SIDE = {"type": "enum", "name": "Side", "symbols": ["buy", "sell"]}
#: Event type -> its Avro schema (the fields the simulator writes).
SCHEMAS = {
    "trade": _record("Trade", [("token", "string"), ("price", "double"), ("size", "double"),
                               ("side", SIDE), ("tradeId", "string"), ("ts", "long"),
                               ("seq", "long")]),
    "price": _record("Price", [("token", "string"), ("price", "double"), ("bid", "double"),
                               ("ask", "double"), ("ts", "long"), ("seq", "long")]),
    "liquidity": _record("Liquidity", [("token", "string"), ("liquidity", "double"),
                                       ("delta", "double"), ("ts", "long"), ("seq", "long")]),
}


def as_avro(stream: Iterator[tuple[str, bytes, bytes]], topics: Mapping[str, str],
            client: SchemaRegistryClient) -> Iterator[tuple[str, bytes, bytes]]:
    """The records of C{stream} (JSON values) with their values in Avro, through C{client}."""
    by_topic = {topic: (AvroSerializer(client, SCHEMAS[kind]),
                        SerializationContext(topic, MessageField.VALUE))
                for kind, topic in topics.items()}
    for topic, key, value in stream:
        serializer, ctx = by_topic[topic]
        data = json.loads(value)
        for name in ("price", "size", "bid", "ask", "liquidity", "delta"):
            if name in data:
                data[name] = float(data[name])  # Avro doubles; JSON wrote some as ints
        encoded = serializer(data, ctx)
        assert encoded is not None
        yield topic, key, encoded
