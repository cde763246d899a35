"""Tests for L{odin_ws.shard.delivery.variants}: the index of subscriptions with options."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from odin_ws.shard.delivery.subscriptions import BudgetExceeded, SubscriptionBudget
from odin_ws.shard.delivery.variants import (
    MERGE_PATCH,
    PLAIN,
    Variant,
    VariantIndex,
    conflict,
    overlaps,
)

DELTA = Variant(delta=MERGE_PATCH)
SLOW = Variant(max_rate=2.0)


class VariantIndexTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.index = VariantIndex(SubscriptionBudget())

    def test_match_by_variant_once_each(self):
        """An event's channel yields each variant once, and each subscriber of it once."""
        a, b, c = object(), object(), object()
        self.index.add_all(a, [("X", "price"), ("*", "price")], DELTA)
        self.index.add_all(b, [("X", "*")], DELTA)
        self.index.add_all(c, [("*", "*")], SLOW)
        self.assertEqual(set(self.index.match("X", "price")), {DELTA, SLOW})
        self.assertEqual(sorted(map(id, self.index.subscribers(DELTA, "X", "price"))),
                         sorted(map(id, (a, b))))
        self.assertEqual(set(self.index.match("Y", "trade")), {SLOW})
        self.assertEqual(self.index.everyone("X", "price"), {a, b, c})

    def test_removal_forgets_the_variant(self):
        """When its last subscriber goes, a variant no longer matches nor counts."""
        a = object()
        self.index.add_all(a, [("X", "price"), ("Y", "price")], DELTA)
        self.assertEqual(self.index.remove(a, "X", "price"), DELTA)
        self.assertEqual(set(self.index.match("X", "price")), set())
        self.assertEqual(self.index.remove_all(a), [DELTA])
        self.assertFalse(self.index.active)
        self.assertFalse(self.index.holds_variant(DELTA))
        self.assertEqual((self.index.total, self.index.budget.total), (0, 0))

    def test_shares_the_shard_budget(self):
        """Subscriptions with options count in the shard's budget, refused whole past it."""
        budget = SubscriptionBudget()
        budget.max_total, budget.max_bytes = 2, 1 << 20
        index = VariantIndex(budget)
        index.add_all(object(), [("X", "price")], DELTA)
        self.assertRaises(BudgetExceeded, index.add_all, object(),
                          [("Y", "price"), ("Z", "price")], SLOW)
        self.assertEqual(budget.total, 1)
        self.assertEqual(set(index.match("Y", "price")), set())

    def test_filters_compare_by_key(self):
        """Variants with equal filter keys are equal whatever the compiled object."""
        self.assertEqual(Variant(filter_key="k", filter=None), Variant(filter_key="k"))
        self.assertNotEqual(Variant(filter_key="k"), Variant(filter_key="j"))
        self.assertTrue(PLAIN.plain)
        self.assertFalse(SLOW.plain)

    def test_overlap_and_conflict(self):
        """Patterns overlap when some channel matches both; another variant on one conflicts."""
        self.assertTrue(overlaps(("*", "price"), ("X", "*")))
        self.assertFalse(overlaps(("X", "price"), ("Y", "*")))
        held = {("X", "*"): DELTA}
        self.assertEqual(conflict(held, [("*", "price")], SLOW), (("X", "*"), DELTA))
        self.assertIsNone(conflict(held, [("*", "price")], DELTA))
        self.assertIsNone(conflict(held, [("Y", "price")], SLOW))
