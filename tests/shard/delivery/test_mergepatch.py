"""
Tests for L{odin_ws.shard.delivery.mergepatch}: diffs that the client
library's RFC 7386 apply (the one clients run) turns back exactly.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from odin_ws.shard.delivery.mergepatch import diff
from odinws_client.mergepatch import apply_merge_patch as apply

_scalars = st.one_of(st.booleans(), st.integers(), st.text(max_size=5),
                     st.floats(allow_nan=False, allow_infinity=False))
_values = st.recursive(_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=3), inner, max_size=3)),
    max_leaves=10)
_objects = st.dictionaries(st.text(max_size=3), _values, max_size=5)


class MergePatchTests(SynchronousTestCase):
    def test_rfc_7386_examples(self):
        """apply() gives the RFC's appendix A results."""
        cases = [({"a": "b"}, {"a": "c"}, {"a": "c"}), ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
                 ({"a": "b"}, {"a": None}, {}), ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
                 ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
                 (["a", "b"], ["c", "d"], ["c", "d"]), ({"a": "b"}, ["c"], ["c"]),
                 ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
                 ([1, 2], {"a": "b", "c": None}, {"a": "b"}),
                 ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}})]
        for target, patch, result in cases:
            self.assertEqual(apply(target, patch), result)

    @given(_objects, _objects)
    def test_diff_applies_back_exactly(self, old, new):
        """For objects without null members, apply(old, diff(old, new)) is new."""
        patch = diff(old, new)
        self.assertIsNotNone(patch)
        self.assertEqual(apply(old, patch), new)

    def test_what_a_patch_cannot_say(self):
        """A null member (at any object depth) or a non-object gives None; null in a list is fine."""
        self.assertIsNone(diff({"a": 1}, {"a": None}))
        self.assertIsNone(diff({"a": 1}, {"a": {"b": None}}))
        self.assertIsNone(diff([1], {"a": 1}))
        self.assertIsNone(diff({"a": 1}, 3))
        self.assertEqual(diff({"a": 1}, {"a": [None]}), {"a": [None]})

    def test_only_what_changed(self):
        """Unchanged members are left out, removed ones are null, nested objects are diffed."""
        self.assertEqual(diff({"a": 1, "b": {"c": 1, "d": 2}, "e": 3},
                              {"a": 1, "b": {"c": 1, "d": 5}, "f": 4}),
                         {"b": {"d": 5}, "e": None, "f": 4})
        self.assertEqual(diff({"a": 1}, {"a": 1.0}), {"a": 1.0})
        self.assertEqual(diff({"a": 1}, {"a": True}), {"a": True})
