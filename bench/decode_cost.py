"""
What decoding a record's value costs per event, by format: the whole of
C{RecordMapper.map} (decode, channel, envelope) on the consumer thread, one
process, values encoded by confluent-kafka's serializers, schemas already
cached (confluent-kafka's mock registry client: no network in the loop).
The best of C{--runs} runs of C{--events} events, in µs of process CPU
per event (CPU, not wall time: the machine is shared); compare
with a fan-out's cost per frame (docs/performance.md, "Cost per frame").

    .venv/bin/python bench/decode_cost.py [--events 5000] [--runs 15]
"""

from __future__ import annotations

import argparse
import datetime
import decimal
import os
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from confluent_kafka.schema_registry import SchemaRegistryClient  # noqa: E402

from odin_ws.common import topicoptions  # noqa: E402
from odin_ws.common.config import Config, validate  # noqa: E402
from odin_ws.common.settings import Settings  # noqa: E402
from odin_ws.shard.kafka.records import RecordMapper  # noqa: E402
from odin_ws.shard.kafka.schemasource import SchemaSource  # noqa: E402
from odin_ws.shard.kafka.valueformats import ValueDecoder  # noqa: E402
from tests.helpers.schemas import (  # noqa: E402
    ProtobufTrade,
    avro_serializer,
    context,
    json_serializer,
    protobuf_serializer,
)

TOPIC = "bench.trades"


def values(client: Any) -> dict[str, tuple[str, bytes]]:
    """A trade of about the same content in each format: format -> (topic format, value)."""
    at = datetime.datetime(2026, 1, 2, 3, 4, 5, 123000, tzinfo=datetime.UTC)
    avro = avro_serializer(client)(
        {"token": "ABC", "price": decimal.Decimal("12.3400"), "side": "SELL", "at": at,
         "raw": b"\x00\xff", "venue": "xnas", "ratio": 0.5}, context(TOPIC))
    message = ProtobufTrade(token="ABC", qty=5, raw=b"\x00\xff", side=2, exchange="xnas",
                            price=12.34)
    message.at.FromDatetime(at)
    proto = protobuf_serializer(client)(message, context(TOPIC))
    jsonschema = json_serializer(client)({"token": "ABC", "price": 12.34, "kind": "SELL"},
                                         context(TOPIC))
    plain = (b'{"token":"ABC","price":"12.3400","side":"SELL","at":"2026-01-02T03:04:05.123Z",'
             b'"raw":"AP8=","venue":"xnas","ratio":0.5}')
    return {"json": ("json", plain), "avro": ("avro", avro), "protobuf": ("protobuf", proto),
            "jsonschema": ("jsonschema", jsonschema), "auto (wire: avro)": ("auto", avro),
            "auto (plain json)": ("auto", plain)}


def measure(mapper: RecordMapper, value: bytes, events: int, runs: int) -> float:
    best = float("inf")
    for _ in range(runs):
        started = time.process_time()
        for offset in range(events):
            mapper.map(TOPIC, b"ABC", value, 1, 0, offset, "e")
        best = min(best, time.process_time() - started)
    return best / events * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    client = SchemaRegistryClient.new_client({"url": "mock://bench"})
    settings = Settings.from_config(Config(validate({"schema_registry.url": "mock://bench"})))
    decoder = ValueDecoder(SchemaSource(settings.schema_registry, lambda: client))
    print(f"| format | value bytes | µs CPU per event (best of {args.runs} × {args.events:,}) |")
    print("|---|---:|---:|")
    for name, (fmt, value) in values(client).items():
        options = topicoptions.for_topics({TOPIC: "trade"}, {TOPIC: {"format": fmt}}, "", "")
        mapper = RecordMapper({TOPIC: "trade"}, options, decoder, 1 << 20)
        result = mapper.map(TOPIC, b"ABC", value, 1, 0, 0, "e")
        assert not isinstance(result, str), (name, result)
        print(f"| {name} | {len(value)} | {measure(mapper, value, args.events, args.runs):.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
