"""
Tests for L{odin_ws.shard.kafka.schemasource} beyond what the decoders'
tests cover: reloaded bounds.
"""

from __future__ import annotations

from typing import Any

from confluent_kafka.schema_registry import Schema, SchemaRegistryError
from twisted.trial.unittest import SynchronousTestCase

from odin_ws.shard.kafka.schemasource import Missing, SchemaSource
from tests.helpers.schemas import AVRO_TRADE
from tests.shard.kafka.test_valueformats import registry_settings


class CountingClient:
    """A registry serving ids 1-3 (any other is 404), counting requests per id."""

    def __init__(self) -> None:
        self.calls: dict[int, int] = {}

    def get_schema(self, schema_id: int, fmt: str | None = None) -> Any:
        self.calls[schema_id] = self.calls.get(schema_id, 0) + 1
        if schema_id not in (1, 2, 3):
            raise SchemaRegistryError(404, 40403, "Schema not found")
        return Schema(AVRO_TRADE, "AVRO")


class ReconfigureTests(SynchronousTestCase):

    def setUp(self) -> None:
        self.now = 100.0
        self.client = CountingClient()
        self.source = SchemaSource(registry_settings(wait=5.0, retry=5.0, cache_size=3),
                                   lambda: self.client, clock=lambda: self.now)
        self.addCleanup(self.source.close)

    def test_smaller_cache_drops_least_recently_used(self) -> None:
        """
        A reload to a smaller cache_size drops the least recently used
        schemas at once: the most recent is still served without a
        request, the dropped ones are fetched again.
        """
        for schema_id in (1, 2, 3, 1):
            self.assertIsInstance(self.source.schema(schema_id), Schema)
        self.source.reconfigure(registry_settings(cache_size=1))
        self.assertEqual(self.source.status()["schemas"], 1)
        self.assertIsInstance(self.source.schema(1), Schema)
        self.assertEqual(self.client.calls[1], 1)
        self.assertIsInstance(self.source.schema(2), Schema)
        self.assertEqual(self.client.calls[2], 2)
        self.assertEqual(self.source.status()["schemas"], 1)

    def test_retry_takes_the_reloaded_value(self) -> None:
        """A failure after a reload to a shorter retry is asked again after the new retry."""
        self.source.reconfigure(registry_settings(wait=5.0, retry=1.0))
        self.assertEqual(self.source.schema(9), Missing.UNKNOWN)
        self.now += 0.5
        self.assertEqual(self.source.schema(9), Missing.UNKNOWN)
        self.assertEqual(self.client.calls[9], 1)
        self.now += 0.5
        self.assertEqual(self.source.schema(9), Missing.UNKNOWN)
        self.assertEqual(self.client.calls[9], 2)
