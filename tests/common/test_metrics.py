"""odin_ws.common.metrics: each process's exposition; the garbage collector's pauses."""

from __future__ import annotations

import gc

from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from twisted.trial import unittest

from odin_ws.common import metrics


def _count(generation: int) -> float:
    return metrics.REGISTRY.get_sample_value(
        "odinws_gc_pause_seconds_count", {"generation": str(generation)}) or 0.0


class ExpositionTests(unittest.TestCase):

    def families(self, process: metrics.Process) -> set[str]:
        text = metrics.exposition(process).decode()
        return {f.name for f in text_string_to_metric_families(text)}

    def test_each_process_its_own(self):
        """
        The parent's exposition leaves out what only shards set (connections,
        Kafka) and a shard's what only the parent sets (readiness, hub,
        guard); families both set appear in both, and no family of the
        registry is missing from both.
        """
        parent, shard = self.families(metrics.Process.PARENT), self.families(metrics.Process.SHARD)
        self.assertIn("odinws_ready", parent)
        self.assertNotIn("odinws_ready", shard)
        self.assertIn("odinws_kafka_connected", shard)
        self.assertNotIn("odinws_kafka_connected", parent)
        self.assertIn("odinws_connections", shard)
        self.assertNotIn("odinws_connections", parent)
        for both in ("odinws_rejected_connections", "odinws_build_info",
                     "odinws_process_cpu_seconds"):
            self.assertIn(both, parent & shard)
        every = {f.name for f in text_string_to_metric_families(
            generate_latest(metrics.REGISTRY).decode())}
        self.assertEqual(every - parent - shard, set())

    def test_no_created_series(self):
        """No counter or histogram carries a _created series (prometheus_client's default)."""
        metrics.EVENTS_REPLAYED.inc()
        for process in metrics.Process:
            self.assertNotIn(b"_created", metrics.exposition(process))


class GcPausesTests(unittest.TestCase):

    def setUp(self):
        # Only this test's collections, timed once: no automatic collection
        # in between, and no other timer (a shard service another test left
        # running keeps metrics.GC_PAUSES installed) counting them too.
        others = [cb for cb in gc.callbacks if isinstance(cb, metrics.GcPauses)]
        for cb in others:
            gc.callbacks.remove(cb)
        self.addCleanup(gc.callbacks.extend, others)
        if gc.isenabled():
            gc.disable()
            self.addCleanup(gc.enable)
        self.pauses = metrics.GcPauses()
        self.addCleanup(self.pauses.unwatch)

    def test_full_collection_timed(self):
        """A full collection is counted under generation 2, with its duration."""
        self.pauses.watch()
        before = _count(2)
        total = metrics.REGISTRY.get_sample_value(
            "odinws_gc_pause_seconds_sum", {"generation": "2"}) or 0.0
        gc.collect()
        self.assertEqual(_count(2), before + 1)
        self.assertGreater(metrics.REGISTRY.get_sample_value(
            "odinws_gc_pause_seconds_sum", {"generation": "2"}), total)

    def test_young_collection_by_generation(self):
        """A collection of generation 0 only is counted there, not as a full one."""
        self.pauses.watch()
        young, full = _count(0), _count(2)
        gc.collect(0)
        self.assertEqual(_count(0), young + 1)
        self.assertEqual(_count(2), full)

    def test_watch_once(self):
        """Watching twice installs one callback; unwatch removes it."""
        self.pauses.watch()
        self.pauses.watch()
        self.assertEqual(gc.callbacks.count(self.pauses), 1)
        self.pauses.unwatch()
        self.assertNotIn(self.pauses, gc.callbacks)
        before = _count(2)
        gc.collect()
        self.assertEqual(_count(2), before)
