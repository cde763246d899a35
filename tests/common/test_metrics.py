"""
odin_ws.common.metrics: each process's exposition, the garbage collector's
pauses, the process metrics, renamed metrics.
"""

from __future__ import annotations

import gc
import os
import resource
import time

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
                     "process_cpu_seconds"):
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


class ProcessMetricsTests(unittest.TestCase):
    """The standard process metrics and the deprecated aliases of renamed metrics."""

    def samples(self) -> dict[str, float]:
        return {s.name: s.value for f in metrics.REGISTRY.collect() for s in f.samples}

    def test_standard_process_metrics(self):
        """
        The registry exports the standard process metrics of this process:
        its open descriptors (as /proc counts them) within its limit, its
        resident memory, CPU time and start time.
        """
        before = self.samples()
        extra = [os.open(os.devnull, os.O_RDONLY) for _ in range(5)]
        for fd in extra:
            self.addCleanup(os.close, fd)
        after = self.samples()
        self.assertEqual(after["process_open_fds"], before["process_open_fds"] + 5)
        self.assertEqual(after["process_max_fds"],
                         resource.getrlimit(resource.RLIMIT_NOFILE)[0])
        self.assertGreater(after["process_resident_memory_bytes"], 0)
        self.assertGreater(after["process_cpu_seconds_total"], 0)
        self.assertLess(after["process_start_time_seconds"], time.time())

    def test_deprecated_aliases(self):
        """
        Every old name in metrics.RENAMED is still exported, with the new
        name's value and a help text saying it is deprecated and what
        replaced it.
        """
        metrics.GUARD_CPU.set(0.25)
        families = {f.name: f for f in metrics.REGISTRY.collect()}
        for old, new in metrics.RENAMED.items():
            alias, current = families[old], families[new]
            self.assertEqual(alias.type, current.type, old)
            self.assertTrue(alias.documentation.startswith(f"Deprecated: renamed {new}"), old)
            self.assertEqual(len(alias.samples), len(current.samples), old)
            for a, c in zip(alias.samples, current.samples):
                self.assertEqual(a.name, old + c.name[len(new):])
        # The process metrics are read from /proc once per collect() (they
        # may move between the two reads); a set gauge must be equal.
        self.assertEqual(metrics.REGISTRY.get_sample_value("odinws_guard_cpu_fraction"), 0.25)

    def test_ratio_names(self):
        """0-1 gauges end in _ratio (Prometheus naming); none ends in _fraction but the aliases."""
        names = {f.name for f in metrics.REGISTRY.collect()}
        self.assertIn("odinws_guard_cpu_ratio", names)
        self.assertIn("odinws_guard_memory_ratio", names)
        self.assertEqual({n for n in names if n.endswith("_fraction")},
                         {n for n in metrics.RENAMED if n.endswith("_fraction")})
