"""
Tests for L{odin_ws.shard.delivery.filters}: the filter grammar, canonical
keys, bounds and error codes, and the per-shard pool (what a compiled filter
passes: test_filtermatch).
"""

from __future__ import annotations

import json
from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from odin_ws.common import config as configmod
from odin_ws.common.settings import Settings
from odin_ws.shard.delivery.filters import (
    BAD_FILTER,
    FILTER_TOO_LARGE,
    MAX_DEPTH,
    MAX_IN_VALUES,
    MAX_NODES,
    SERVER_FILTER_LIMIT,
    FilterError,
    FilterPool,
    compile_filter,
)


class CanonicalKeyTests(SynchronousTestCase):
    def assertSameKey(self, *specs):
        keys = {compile_filter(spec).key for spec in specs}
        self.assertEqual(len(keys), 1, keys)

    def test_keyOrder(self):
        """Key order, nesting of and, and duplicates do not change the key."""
        self.assertSameKey(
            {"side": "buy", "qty": {"gte": 100, "lt": 5}},
            {"qty": {"lt": 5, "gte": 100}, "side": "buy"},
            {"and": [{"qty": {"lt": 5}}, {"and": [{"side": {"eq": "buy"}}, {"qty": {"gte": 100}}]}]},
            {"and": [{"side": "buy"}, {"side": "buy"}, {"qty": {"gte": 100.0, "lt": 5}}]},
        )

    def test_numbersAndLists(self):
        """Equal numbers spelled differently, and in-lists in any order or repeated, share a key."""
        self.assertSameKey({"n": 100}, {"n": 100.0}, {"n": 1e2}, {"n": Decimal("1.00E+2")})
        self.assertSameKey({"n": {"in": [1, "a", None]}}, {"n": {"in": [None, "a", 1.0, 1]}})
        self.assertSameKey({"n": 0}, {"n": -0.0})

    def test_notAndSingletons(self):
        """not of not is the filter itself; an and/or of one part is that part."""
        self.assertSameKey({"a": 1}, {"not": {"not": {"a": 1}}}, {"or": [{"a": 1}]},
                           {"and": [{"or": [{"a": 1}, {"a": 1}]}]})

    def test_differentFiltersDifferentKeys(self):
        """Filters that test different things get different keys."""
        specs = [{"a": 1}, {"a": "1"}, {"a": True}, {"a": None}, {"a": {"ne": 1}},
                 {"a": {"gt": 1}}, {"a": {"gte": 1}}, {"b": 1}, {"a": {"in": [1, 2]}},
                 {"or": [{"a": 1}, {"b": 1}]}, {"and": [{"a": 1}, {"b": 1}]},
                 {"not": {"a": 1}}, {"a": {"exists": True}}, {"a": 1.5}]
        keys = [compile_filter(spec).key for spec in specs]
        self.assertEqual(len(set(keys)), len(specs), keys)

    def test_keyIsAFilter(self):
        """The key is JSON for the same filter: compiling it again gives the same key."""
        for spec in ({"side": "buy", "qty": {"gte": 100.5}},
                     {"or": [{"s": {"in": ["A", 2, None]}}, {"not": {"x": {"exists": True}}}]},
                     {"k": "quote\"\\ \u00e9 \ud83d\ude00"}):
            key = compile_filter(spec).key
            self.assertEqual(compile_filter(json.loads(key)).key, key)

    @given(st.dictionaries(st.sampled_from("abcd"),
                           st.one_of(st.integers(-10**20, 10**20), st.text(max_size=5),
                                     st.booleans(), st.none(),
                                     st.floats(allow_nan=False, allow_infinity=False)),
                           min_size=1, max_size=4),
           st.randoms())
    def test_anyOrderSameKeyAndVerdicts(self, spec, rnd):
        """Shuffling a filter's keys (or wrapping its fields in and) keeps its key and verdicts."""
        items = list(spec.items())
        rnd.shuffle(items)
        wrapped = {"and": [{k: v} for k, v in items]}
        first, second = compile_filter(spec), compile_filter(wrapped)
        self.assertEqual(first.key, second.key)
        self.assertTrue(first.matches(spec))
        self.assertTrue(second.matches(spec))


class ErrorTests(SynchronousTestCase):
    def assertRefused(self, spec, code, *, max_bytes=1024):
        with self.assertRaises(FilterError) as caught:
            compile_filter(spec, max_bytes)
        self.assertEqual(caught.exception.code, code)
        self.assertTrue(caught.exception.message)
        self.assertIsInstance(caught.exception, ValueError)
        return caught.exception.message

    def test_badShapes(self):
        """What breaks the grammar is bad_filter, with a message naming the problem."""
        cases = [
            ([{"a": 1}], "JSON object"),
            ("side=buy", "JSON object"),
            (None, "JSON object"),
            ({}, "empty"),
            ({"a": {}}, "empty operator"),
            ({"a": {"like": "x%"}}, 'unknown operator "like"'),
            ({"a": {"$gt": 1}}, "unknown operator"),
            ({"and": {"a": 1}}, "non-empty list"),
            ({"or": []}, "non-empty list"),
            ({"and": [1]}, "JSON object"),
            ({"not": [{"a": 1}]}, "JSON object"),
            ({"a": {"gt": "1.25"}}, "compares with a number"),
            ({"a": {"lt": True}}, "compares with a number"),
            ({"a": {"gte": None}}, "compares with a number"),
            ({"a": [1, 2]}, "not a list"),
            ({"a": {"eq": {"b": 1}}}, "not an object"),
            ({"a": {"in": "AB"}}, "non-empty list"),
            ({"a": {"in": []}}, "non-empty list"),
            ({"a": {"in": [[1]]}}, "not a list"),
            ({"a": {"exists": 1}}, "true or false"),
            ({"a": float("nan")}, "finite"),
            ({"a": {"gt": float("inf")}}, "finite"),
            ({"a": {"in": [float("-inf")]}}, "finite"),
            ({"a": Decimal("NaN")}, "finite"),
            ({1: "x"}, "keys must be strings"),
            ({"a": {1: 2}}, "keys must be strings"),
            ({"a": (1, 2)}, "tuple (not JSON)"),
            ({"a": b"x"}, "bytes (not JSON)"),
            ({"a": {1, 2}}, "set (not JSON)"),
            ({"a": object()}, "not JSON"),
        ]
        for spec, fragment in cases:
            message = self.assertRefused(spec, BAD_FILTER)
            self.assertIn(fragment, message, spec)

    def test_tooManyNodes(self):
        """More than MAX_NODES conditions is filter_too_large; exactly MAX_NODES compiles."""
        fields = {f"f{i}": i for i in range(MAX_NODES)}
        compile_filter(fields)
        self.assertRefused({**fields, "extra": 1}, FILTER_TOO_LARGE)
        self.assertRefused({"and": [{"a": {"gt": i}} for i in range(MAX_NODES)]},
                           FILTER_TOO_LARGE)

    def test_tooDeep(self):
        """and/or/not nested more than MAX_DEPTH deep is filter_too_large, however deep."""
        spec: object = {"a": 1}
        for _ in range(MAX_DEPTH):
            spec = {"not": spec}
        compile_filter(spec)
        self.assertRefused({"or": [spec]}, FILTER_TOO_LARGE)
        deep: object = {"a": 1}
        for _ in range(100000):  # far past the recursion limit: refused without recursing
            deep = {"and": [deep]}
        self.assertRefused(deep, FILTER_TOO_LARGE)

    def test_inListLength(self):
        """An in list of more than MAX_IN_VALUES values is filter_too_large, before looking at them."""
        compile_filter({"a": {"in": list(range(MAX_IN_VALUES))}})
        self.assertRefused({"a": {"in": list(range(MAX_IN_VALUES + 1))}}, FILTER_TOO_LARGE)
        self.assertRefused({"a": {"in": [object()] * 10**6}}, FILTER_TOO_LARGE)

    def test_bytes(self):
        """The filter's compact UTF-8 JSON may be max_bytes long, not one byte more."""
        for spec in ({"side": "b" * 50}, {"k\u00e9y": {"in": ["\u20ac", 1.5, -7, None, True]}},
                     {"or": [{"a": {"gte": 10, "lt": 20}}, {"not": {"b": False}}]},
                     {"q": "\"\\\n"}):
            size = len(json.dumps(spec, separators=(",", ":"), ensure_ascii=False).encode())
            compile_filter(spec, max_bytes=size)
            self.assertRefused(spec, FILTER_TOO_LARGE, max_bytes=size - 1)

    def test_giantValues(self):
        """A huge string or integer is filter_too_large, not a slow or failing conversion."""
        self.assertRefused({"a": "x" * 10**6}, FILTER_TOO_LARGE)
        self.assertRefused({"a": 10**100000}, FILTER_TOO_LARGE)
        self.assertRefused({"x" * 10**6: 1}, FILTER_TOO_LARGE)
        self.assertRefused({"a": 10**5000}, FILTER_TOO_LARGE, max_bytes=5000)
        self.assertTrue(compile_filter({"a": 10**5000}, max_bytes=10**5).matches({"a": 10**5000}))

    def test_parsedMessage(self):
        """A filter as a subscribe message's JSON parser hands it over compiles (1e400 is refused)."""
        self.assertTrue(compile_filter(json.loads('{"p":{"gte":1.25}}')).matches({"p": "2"}))
        self.assertRefused(json.loads('{"p":{"gte":1e400}}'), BAD_FILTER)


class FilterPoolTests(SynchronousTestCase):
    def test_internsByKey(self):
        """Equal filters however written are one compiled object, counted per holder."""
        pool = FilterPool(max_filters=10)
        first = pool.acquire({"side": "buy", "qty": {"gte": 1}})
        second = pool.acquire({"qty": {"gte": 1.0}, "side": {"eq": "buy"}})
        self.assertIs(first, second)
        self.assertEqual((len(pool), pool.holders(first)), (1, 2))
        other = pool.acquire({"side": "sell"})
        self.assertIsNot(other, first)
        self.assertEqual(len(pool), 2)

    def test_releaseForgetsAfterLastHolder(self):
        """A filter stays until its last holder releases it; a new acquire then compiles anew."""
        pool = FilterPool(max_filters=10)
        first = pool.acquire({"a": 1})
        pool.acquire({"a": 1})
        pool.release(first)
        self.assertEqual((len(pool), pool.holders(first)), (1, 1))
        pool.release(first)
        self.assertEqual((len(pool), pool.holders(first)), (0, 0))
        self.assertRaises(KeyError, pool.release, first)
        again = pool.acquire({"a": 1})
        self.assertIsNot(again, first)
        self.assertRaises(KeyError, pool.release, first)
        self.assertEqual(pool.holders(again), 1)

    def test_capOnDistinctFilters(self):
        """Past max_filters distinct filters a new one is server_filter_limit; held ones still share."""
        pool = FilterPool(max_filters=2)
        a = pool.acquire({"a": 1})
        pool.acquire({"b": 1})
        with self.assertRaises(FilterError) as caught:
            pool.acquire({"c": 1})
        self.assertEqual(caught.exception.code, SERVER_FILTER_LIMIT)
        self.assertIn("limits.max_shard_filters", caught.exception.message)
        self.assertIs(pool.acquire({"a": 1.0}), a)
        pool.release(a)
        pool.release(a)
        pool.acquire({"c": 1})
        self.assertEqual(len(pool), 2)

    def test_refusedFilterChangesNothing(self):
        """A bad or oversized filter is refused by the pool with its code and leaves it as it was."""
        pool = FilterPool(max_filters=5, max_bytes=20)
        for spec, code in (({"a": {"zz": 1}}, BAD_FILTER), ({"a": "x" * 30}, FILTER_TOO_LARGE)):
            with self.assertRaises(FilterError) as caught:
                pool.acquire(spec)
            self.assertEqual(caught.exception.code, code)
        self.assertEqual(len(pool), 0)

    def test_releaseOfAForeignFilter(self):
        """Releasing a filter the pool does not hold (compiled elsewhere) is a KeyError."""
        pool = FilterPool(max_filters=5)
        pool.acquire({"a": 1})
        self.assertRaises(KeyError, pool.release, compile_filter({"a": 1}))
        self.assertEqual(len(pool), 1)

    def test_boundsFromSettings(self):
        """The pool takes its bounds from limits and a reload changes them for the next acquire."""
        def limits(**values):
            config = configmod.load(None, environ={}).replace(**values)
            return Settings.from_config(config).limits

        small = limits(limits__max_shard_filters=1, limits__max_filter_bytes=64)
        pool = FilterPool.from_limits(small)
        held = pool.acquire({"a": 1})
        self.assertRaises(FilterError, pool.acquire, {"b": 1})
        self.assertRaises(FilterError, FilterPool.from_limits(small).acquire, {"a": "x" * 64})
        pool.reconfigure(limits(limits__max_shard_filters=2, limits__max_filter_bytes=100))
        pool.acquire({"b": "x" * 64})
        pool.reconfigure(small)
        self.assertIs(pool.acquire({"a": 1}), held, "held filters stay shared after a reload")
        self.assertEqual(len(pool), 2)
