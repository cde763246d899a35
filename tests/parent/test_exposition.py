"""Tests for L{odin_ws.parent.exposition}: merging the parent's and the shards' metrics."""

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from twisted.trial import unittest

from odin_ws.common import metrics
from odin_ws.parent.exposition import merge


def _registry_text(shard_value: float, reason: str = "plain") -> bytes:
    """An exposition shaped like a shard's: counters, labelled series, a histogram."""
    registry = CollectorRegistry()
    Gauge("odinws_connections", "Open connections.", registry=registry).set(shard_value)
    closed = Counter("odinws_connections_closed", "Closed.", ["reason", "code"], registry=registry)
    closed.labels(reason=reason, code="1000").inc(shard_value)
    hist = Histogram("odinws_handshake_seconds", "Handshake.", buckets=(0.1, 1),
                     registry=registry)
    hist.observe(0.05)
    return generate_latest(registry)


def _parse(text: bytes) -> dict[str, Any]:
    families = list(text_string_to_metric_families(text.decode()))
    names = [f.name for f in families]
    return {"names": names, "samples": [s for f in families for s in f.samples],
            "families": {f.name: f for f in families}}


class MergeTests(unittest.TestCase):
    def test_shard_label_added(self):
        """Every shard sample gets shard="<i>", including labelled, bucket, sum and count samples."""
        merged = merge(b"", {0: _registry_text(3), 1: _registry_text(4)})
        samples = _parse(merged)["samples"]
        self.assertTrue(samples)
        for sample in samples:
            self.assertIn(sample.labels.get("shard"), ("0", "1"), sample)
        by = {(s.name, s.labels["shard"], s.labels.get("le")): s.value for s in samples}
        self.assertEqual(by[("odinws_connections", "0", None)], 3)
        self.assertEqual(by[("odinws_connections", "1", None)], 4)
        self.assertEqual(by[("odinws_connections_closed_total", "1", None)], 4)
        self.assertEqual(by[("odinws_handshake_seconds_bucket", "0", "0.1")], 1)
        self.assertEqual(by[("odinws_handshake_seconds_count", "1", None)], 1)
        self.assertIn(("odinws_handshake_seconds_sum", "0", None), by)
        closed = [s for s in samples if s.name == "odinws_connections_closed_total"]
        self.assertEqual({s.labels["reason"] for s in closed}, {"plain"})

    def test_families_once_and_contiguous(self):
        """HELP/TYPE appear once per family and each family's samples are together."""
        merged = merge(_registry_text(1), {0: _registry_text(2), 1: _registry_text(3),
                                           2: _registry_text(5)})
        text = merged.decode()
        self.assertEqual(text.count("# TYPE odinws_connections gauge"), 1)
        self.assertEqual(text.count("# HELP odinws_handshake_seconds "), 1)
        names = _parse(merged)["names"]
        self.assertEqual(len(names), len(set(names)), names)
        gauge = _parse(merged)["families"]["odinws_connections"]
        self.assertEqual([(s.labels.get("shard"), s.value) for s in gauge.samples],
                         [(None, 1), ("0", 2), ("1", 3), ("2", 5)])

    def test_parent_as_is(self):
        """The parent's samples are copied unchanged, without a shard label."""
        parent = _registry_text(7)
        merged = merge(parent, {})
        self.assertEqual(merged.splitlines(), parent.splitlines())

    def test_escaped_label_values(self):
        """Label values with quotes, backslashes and newlines survive the merge."""
        tricky = 'say "hi" \\ back\nslash, {brace} }'
        merged = merge(b"", {3: _registry_text(1, reason=tricky)})
        closed = _parse(merged)["families"]["odinws_connections_closed"]
        reasons = {s.labels["reason"] for s in closed.samples}
        self.assertEqual(reasons, {tricky})
        self.assertTrue(all(s.labels["shard"] == "3" for s in closed.samples))

    def test_existing_shard_label_kept(self):
        """A shard sample that already has a shard label keeps it as exported_shard."""
        text = b'# TYPE odinws_hub_queue_batches gauge\nodinws_hub_queue_batches{shard="9"} 2\n'
        sample = _parse(merge(b"", {1: text}))["samples"][0]
        self.assertEqual(sample.labels, {"shard": "1", "exported_shard": "9"})

    def test_untyped_and_timestamps(self):
        """Samples without metadata form their own family; timestamps are kept."""
        text = b"# TYPE a gauge\na 1 1700000000000\nloose_metric 2\n"
        merged = merge(b"", {0: text, 1: text})
        self.assertIn(b'a{shard="0"} 1 1700000000000', merged)
        self.assertEqual(merged.decode().splitlines()[-2:],
                         ['loose_metric{shard="0"} 2', 'loose_metric{shard="1"} 2'])
        parsed = _parse(merged)
        self.assertEqual(set(parsed["names"]), {"a", "loose_metric"})

    def test_malformed_lines_dropped(self):
        """Lines that are not exposition lines are left out, not passed on."""
        text = b'# TYPE g gauge\ng 1\ng{a="unterminated} 2\n{x="y"} 3\ng{a="b"}\n# just a comment\n'
        merged = merge(b"", {0: text})
        self.assertEqual(merged, b'# TYPE g gauge\ng{shard="0"} 1\n')

    def test_real_registry(self):
        """
        The parent's exposition merged with two shards' (the real registry)
        parses back cleanly: one family per name, every sample kept.
        """
        parent = metrics.exposition(metrics.Process.PARENT)
        shard = metrics.exposition(metrics.Process.SHARD)
        merged = merge(parent, {0: shard, 1: shard})
        parsed = _parse(merged)
        self.assertEqual(len(parsed["names"]), len(set(parsed["names"])))
        self.assertEqual(len(parsed["samples"]),
                         len(_parse(parent)["samples"]) + 2 * len(_parse(shard)["samples"]))

    def test_node_series_mean_the_node(self):
        """
        In the node's exposition the node-level gauge odinws_ready stands once,
        unlabelled (no odinws_ready{shard="0"} 0 on a ready node), and
        odinws_kafka_connected only per shard (no unlabelled 0 from the
        parent beside the shards' 1); no counter carries a _created series.
        """
        metrics.KAFKA_CONNECTED.set(1)
        self.addCleanup(metrics.KAFKA_CONNECTED.set, 0)
        merged = _parse(merge(metrics.exposition(metrics.Process.PARENT),
                              {0: metrics.exposition(metrics.Process.SHARD)}))
        ready = merged["families"]["odinws_ready"].samples
        self.assertEqual([s.labels for s in ready], [{}])
        connected = merged["families"]["odinws_kafka_connected"].samples
        self.assertEqual([(s.labels, s.value) for s in connected], [({"shard": "0"}, 1.0)])
        self.assertEqual([s.name for s in merged["samples"] if s.name.endswith("_created")], [])

    def test_empty(self):
        """Nothing in, nothing out."""
        self.assertEqual(merge(b"", {}), b"")
