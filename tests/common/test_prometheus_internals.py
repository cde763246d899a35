"""
Tests for L{odin_ws.common.prometheus_internals}: an L{Observer} writes into a
C{prometheus_client} Histogram exactly what C{Histogram.observe} writes
(same buckets, count and sum), one value at a time or a batch at once, for
a metric without labels and for a labelled child; this also pins the
private attributes it reads to the installed C{prometheus_client}.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Histogram
from twisted.trial.unittest import SynchronousTestCase

from odin_ws.common.prometheus_internals import Observer

BUCKETS = (.001, .005, .01, .1, 1, 10)
#: Below the first bound, on every bound, between bounds, above the last.
VALUES = [0.0, 0.0005, .001, .003, .005, .0051, .01, .05, .1, .5, 1.0, 3.0, 10.0, 11.0, 1e9]


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple], float]:
    """Every sample the registry exposes, by name and labels (no _created)."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in registry.collect() for s in family.samples
            if not s.name.endswith("_created")}


def pair(labels: tuple[str, ...] = ()) -> tuple[CollectorRegistry, Histogram,
                                                CollectorRegistry, Histogram]:
    """Two identical histograms, each in its own registry."""
    made = []
    for _ in range(2):
        registry = CollectorRegistry()
        made += [registry, Histogram("h_seconds", "test", list(labels), buckets=BUCKETS,
                                     registry=registry)]
    return tuple(made)  # type: ignore[return-value]


class ObserverTests(SynchronousTestCase):

    def test_one_at_a_time(self) -> None:
        """Each value lands in the bucket observe() puts it in; count and sum agree."""
        reg_a, a, reg_b, b = pair()
        observer = Observer(b)
        for v in VALUES:
            a.observe(v)
            observer.observe(v)
        self.assertEqual(samples(reg_a), samples(reg_b))
        self.assertEqual(samples(reg_b)[("h_seconds_count", ())], len(VALUES))

    def test_batch(self) -> None:
        """A batch (repeated values too) is counted as observe() of each value."""
        reg_a, a, reg_b, b = pair()
        batch = VALUES + VALUES[3:7]
        for v in batch:
            a.observe(v)
        Observer(b).observe_all(batch)
        got, want = samples(reg_b), samples(reg_a)
        self.assertEqual(got.pop(("h_seconds_sum", ())), sum(batch))
        self.assertAlmostEqual(want.pop(("h_seconds_sum", ())), sum(batch))
        self.assertEqual(got, want)
        self.assertEqual(got[("h_seconds_bucket", (("le", "0.01"),))], 11)

    def test_batch_of_one_and_none(self) -> None:
        """A batch of one value is observe() of it; an empty batch changes nothing."""
        reg_a, a, reg_b, b = pair()
        observer = Observer(b)
        observer.observe_all([])
        a.observe(.002)
        observer.observe_all([.002])
        self.assertEqual(samples(reg_a), samples(reg_b))

    def test_labelled_child(self) -> None:
        """A labelled child is observed alone; its siblings keep nothing."""
        reg_a, a, reg_b, b = pair(("path",))
        a.labels(path="local").observe(.02)
        a.labels(path="relayed")
        b.labels(path="relayed")
        Observer(b.labels(path="local")).observe_all([.02])
        self.assertEqual(samples(reg_a), samples(reg_b))

    def test_parent_with_labels(self) -> None:
        """A histogram with labels cannot be observed without them, as with observe()."""
        _, _, _, b = pair(("path",))
        self.assertRaises(ValueError, Observer, b)
