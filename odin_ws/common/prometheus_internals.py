"""
The contact with C{prometheus_client}'s private state. Observations into a
C{prometheus_client} Histogram at a fraction of
C{Histogram.observe}'s cost (L{Observer}), for the per-event latency
metrics of the delivery path.

C{observe} checks that the metric is observable and walks its buckets in
Python: about 120 bytecodes per call, three calls per event, which was the
largest named piece of the random-tokens path's per-event Python
(docs/performance.md, "Cost per event"). L{Observer} finds the bucket with
C{bisect} and, for a batch, adds to each bucket and to the sum once. What
it writes is what C{observe} writes: the same value objects (their locks
kept, so a scrape from another thread reads them as before), the same
bucket for every value (the first upper bound it is at most, C{+Inf} last).

This is the one module that reads C{prometheus_client}'s private histogram
attributes (C{_upper_bounds}, C{_buckets}, C{_sum}); the pinned version is
checked by tests/common/test_prometheus_internals.py against C{observe} itself.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence

from prometheus_client import Histogram


class Observer:
    """
    Observes values into one histogram (a metric without labels, or one
    labelled child: C{H.labels(...)}).
    """

    __slots__ = ("_bounds", "_buckets", "_sum")

    def __init__(self, histogram: Histogram):
        # Raises for a parent with labels, as its observe() would.
        histogram._raise_if_not_observable()
        self._bounds: list[float] = histogram._upper_bounds
        self._buckets = histogram._buckets
        self._sum = histogram._sum

    def observe(self, amount: float) -> None:
        """C{Histogram.observe(amount)}, without an exemplar."""
        self._sum.inc(amount)
        self._buckets[bisect_left(self._bounds, amount)].inc(1)

    def observe_all(self, amounts: Sequence[float]) -> None:
        """
        C{observe} of every value: each bucket and the sum written once.
        The sum is added up first, so its last bits may differ from
        adding the values one at a time (float rounding); counts are exact.
        """
        if len(amounts) == 1:
            self.observe(amounts[0])
            return
        if not amounts:
            return
        bounds = self._bounds
        counts: dict[int, int] = {}
        for a in amounts:
            i = bisect_left(bounds, a)
            counts[i] = counts.get(i, 0) + 1
        buckets = self._buckets
        for i, n in counts.items():
            buckets[i].inc(n)
        self._sum.inc(sum(amounts))
