"""Tests for L{odinws_tools.avrofeed}: the simulator's events in Avro."""

from __future__ import annotations

import itertools
import json

from confluent_kafka.schema_registry import SchemaRegistryClient
from twisted.trial.unittest import SynchronousTestCase

from odin_ws.common import topicoptions
from odin_ws.common.config import Config, validate
from odin_ws.common.settings import Settings
from odin_ws.shard.kafka.records import RecordMapper
from odin_ws.shard.kafka.schemasource import SchemaSource
from odin_ws.shard.kafka.valueformats import ValueDecoder
from odinws_tools import simulate
from odinws_tools.avrofeed import as_avro


class AvroFeedTests(SynchronousTestCase):

    def test_odinws_reads_back_the_json_feed(self) -> None:
        """
        Every event type, written in Avro under <topic>-value, is read by
        odinws's avro format as the same fields the JSON feed has (on the
        same channel).
        """
        url = "mock://odinws-avrofeed"
        client = SchemaRegistryClient.new_client({"url": url})
        topics = simulate.DEFAULT_TOPICS
        plain = list(itertools.islice(simulate.events(20, seed=3, clock=lambda: 1.7e9), 60))
        avro = list(as_avro(iter(plain), topics, client))
        settings = Settings.from_config(Config(validate({"schema_registry.url": url})))
        types = {t: k for k, t in topics.items()}
        options = topicoptions.for_topics(types, {t: {"format": "avro"} for t in types}, "", "")
        mapper = RecordMapper(types, options,
                              ValueDecoder(SchemaSource(settings.schema_registry, lambda: client)),
                              1 << 20)
        self.assertEqual({t for t, _, _ in avro}, set(topics.values()))
        for (topic, key, value), (_, _, encoded) in zip(plain, avro, strict=True):
            self.assertEqual(encoded[0], 0)
            event = mapper.map(topic, key, encoded, 1, 0, 0)
            expected = json.loads(value)
            data = json.loads(event.envelope)["data"]
            self.assertEqual(data, {k: float(v) if isinstance(v, int) and k not in
                                    ("ts", "seq") else v for k, v in expected.items()})
            self.assertEqual(event.channel, f"odin.token.{key.decode()}.{types[topic]}")
        self.assertEqual(sorted(client.get_subjects()),
                         sorted(f"{t}-value" for t in topics.values()))
