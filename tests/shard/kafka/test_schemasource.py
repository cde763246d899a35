"""
Tests for L{odin_ws.shard.kafka.schemasource} beyond what the decoders'
tests cover: reloaded bounds, references fetched and bounded.
"""

from __future__ import annotations

import threading
from typing import Any

from confluent_kafka.schema_registry import (
    RegisteredSchema,
    Schema,
    SchemaReference,
    SchemaRegistryError,
)
from twisted.trial.unittest import SynchronousTestCase

from odin_ws.shard.kafka.schemasource import (
    MAX_REFERENCE_DEPTH,
    MAX_REFERENCES,
    Missing,
    SchemaSource,
)
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


class ChainClient:
    """
    A registry whose schema 1 references subject s1, s1 references s2, and
    so on to s<length> (its last); s<missing> is not there (404).
    """

    def __init__(self, length: int, missing: int = 0, fan_out: int = 1) -> None:
        self.length = length
        self.missing = missing
        self.fan_out = fan_out
        self.threads: set[str] = set()

    def _refs(self, level: int) -> list[SchemaReference]:
        if level >= self.length:
            return []
        return [SchemaReference(f"odin.test.T{level + 1}_{i}", f"s{level + 1}_{i}", 1)
                for i in range(self.fan_out)]

    def get_schema(self, schema_id: int, fmt: str | None = None) -> Schema:
        return Schema(AVRO_TRADE, "AVRO", self._refs(0))

    def get_version(self, subject: str, version: int, deleted: bool = False,
                    fmt: str | None = None) -> Any:
        self.threads.add(threading.current_thread().name)
        level = int(subject[1:].split("_")[0])
        if level == self.missing:
            raise SchemaRegistryError(404, 40401, f"Subject '{subject}' not found.")
        return RegisteredSchema(subject=subject, version=version, schema_id=None, guid=None,
                                schema=Schema(AVRO_TRADE, "AVRO", self._refs(level)))


class ReferencesTests(SynchronousTestCase):
    """A schema's references: fetched in the pool, bounded."""

    def source(self, client: ChainClient) -> SchemaSource:
        source = SchemaSource(registry_settings(wait=5.0), lambda: client)
        self.addCleanup(source.close)
        return source

    def test_chain_within_the_bounds(self) -> None:
        """
        References MAX_REFERENCE_DEPTH levels deep are all fetched, in the
        pool's threads (never the consumer's), each listed after the ones it
        references.
        """
        client = ChainClient(MAX_REFERENCE_DEPTH)
        source = self.source(client)
        self.assertIsInstance(source.schema(1), Schema)
        names = [d.name for d in source.dependencies(1)]
        self.assertEqual(names, [f"odin.test.T{n}_0" for n in range(MAX_REFERENCE_DEPTH, 0, -1)])
        self.assertEqual({name.split("_")[0] for name in client.threads}, {"odinws-schemas"})

    def test_too_deep(self) -> None:
        """One level more is refused: schema_references, and the registry counts as reachable."""
        source = self.source(ChainClient(MAX_REFERENCE_DEPTH + 1))
        self.assertEqual(source.schema(1), Missing.REFERENCES)
        status = source.status()
        self.assertEqual(status["state"], "ok")
        self.assertIn(f"deeper than {MAX_REFERENCE_DEPTH}", status["last_error"])

    def test_too_many(self) -> None:
        """More than MAX_REFERENCES distinct referenced schemas are refused."""
        source = self.source(ChainClient(2, fan_out=MAX_REFERENCES))
        self.assertEqual(source.schema(1), Missing.REFERENCES)
        self.assertIn(f"more than {MAX_REFERENCES}", source.status()["last_error"])

    def test_missing_reference(self) -> None:
        """A reference the registry does not have is schema_references, naming it."""
        source = self.source(ChainClient(3, missing=2))
        self.assertEqual(source.schema(1), Missing.REFERENCES)
        self.assertIn("s2_0 version 1", source.status()["last_error"])
