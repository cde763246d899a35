"""
Tests for L{odin_ws.shard.delivery.filtermatch}: what a compiled filter
passes, operator by operator, and the exact rules for numbers, numeric
strings, booleans, null and missing fields (docs/protocol.md, "Filters").
"""

from __future__ import annotations

import math
import operator
import re
from decimal import Decimal

from hypothesis import example, given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from odin_ws.shard.delivery.filters import compile_filter


def passes(spec: object, data: object) -> bool:
    return compile_filter(spec).matches(data)


class OperatorTests(SynchronousTestCase):
    def test_equalityShorthand(self):
        """A scalar value is equality: {"side":"buy"} passes "buy" only."""
        self.assertTrue(passes({"side": "buy"}, {"side": "buy", "qty": 1}))
        self.assertFalse(passes({"side": "buy"}, {"side": "sell"}))
        self.assertFalse(passes({"side": "buy"}, {"qty": 1}))
        self.assertEqual(compile_filter({"side": "buy"}).key,
                         compile_filter({"side": {"eq": "buy"}}).key)

    def test_comparisons(self):
        """lt, lte, gt and gte compare numbers, with the bound on the right."""
        cases = {"lt": (False, False, True), "lte": (False, True, True),
                 "gt": (True, False, False), "gte": (True, True, False)}
        for op, expected in cases.items():
            got = tuple(passes({"qty": {op: 100}}, {"qty": q}) for q in (101, 100, 99))
            self.assertEqual(got, expected, op)

    def test_notEqual(self):
        """ne passes a present field with another value, and not a missing one."""
        self.assertTrue(passes({"side": {"ne": "buy"}}, {"side": "sell"}))
        self.assertTrue(passes({"side": {"ne": "buy"}}, {"side": None}))
        self.assertFalse(passes({"side": {"ne": "buy"}}, {"side": "buy"}))
        self.assertFalse(passes({"side": {"ne": "buy"}}, {}))
        self.assertTrue(passes({"qty": {"ne": 1}}, {"qty": "x"}))
        self.assertFalse(passes({"qty": {"ne": 1}}, {"qty": "1.0"}))

    def test_in(self):
        """in passes a value equal to any of the list's, by the same rules as eq."""
        spec = {"symbol": {"in": ["A", "B", 5, True, None]}}
        for value in ("A", "B", 5, 5.0, "5.00", True, None):
            self.assertTrue(passes(spec, {"symbol": value}), value)
        for value in ("C", 6, 1, False, "a", [], {}):
            self.assertFalse(passes(spec, {"symbol": value}), value)
        self.assertFalse(passes(spec, {}))

    def test_inDecimalsAndFloats(self):
        """in compares numbers exactly: a float in the data is its shortest decimal form."""
        spec = {"p": {"in": [0.1, 10**300, 2**60]}}
        self.assertTrue(passes(spec, {"p": 0.1}))
        self.assertTrue(passes(spec, {"p": "0.10"}))
        self.assertTrue(passes(spec, {"p": 1e300}))
        self.assertTrue(passes(spec, {"p": 2**60}))
        self.assertFalse(passes(spec, {"p": float(2**60)}))
        self.assertFalse(passes(spec, {"p": 0.2}))
        self.assertFalse(passes(spec, {"p": float("nan")}))

    def test_exists(self):
        """exists: true passes a present field (null included), false a missing one."""
        self.assertTrue(passes({"f": {"exists": True}}, {"f": None}))
        self.assertFalse(passes({"f": {"exists": True}}, {"g": 1}))
        self.assertTrue(passes({"f": {"exists": False}}, {"g": 1}))
        self.assertFalse(passes({"f": {"exists": False}}, {"f": 0}))

    def test_andOrNot(self):
        """and needs every part, or any, not the opposite; fields side by side are an and."""
        buy_big = {"side": "buy", "qty": {"gte": 100}}
        self.assertTrue(passes(buy_big, {"side": "buy", "qty": 100}))
        self.assertFalse(passes(buy_big, {"side": "buy", "qty": 99}))
        self.assertTrue(passes({"and": [{"side": "buy"}, {"qty": {"gte": 100}}]},
                               {"side": "buy", "qty": 150}))
        self.assertFalse(passes({"and": [{"side": "buy"}, {"qty": {"gte": 100}}]},
                                {"side": "sell", "qty": 150}))
        either = {"or": [{"side": "buy"}, {"qty": {"gte": 100}}]}
        self.assertTrue(passes(either, {"side": "sell", "qty": 150}))
        self.assertTrue(passes(either, {"side": "buy", "qty": 1}))
        self.assertFalse(passes(either, {"side": "sell", "qty": 1}))
        self.assertTrue(passes({"not": {"side": "buy"}}, {"side": "sell"}))
        self.assertTrue(passes({"not": {"side": "buy"}}, {}))
        self.assertFalse(passes({"not": {"side": "buy"}}, {"side": "buy"}))

    def test_manyChildren(self):
        """and/or of more than two parts look at every part."""
        three = [{"a": 1}, {"b": 2}, {"c": 3}]
        self.assertTrue(passes({"and": three}, {"a": 1, "b": 2, "c": 3}))
        self.assertFalse(passes({"and": three}, {"a": 1, "b": 2, "c": 4}))
        self.assertTrue(passes({"or": three}, {"c": 3}))
        self.assertFalse(passes({"or": three}, {"c": 4}))

    def test_twoOperatorsOnOneField(self):
        """Several operators on one field must all hold: a range."""
        spec = {"qty": {"gte": 100, "lt": 200}}
        self.assertEqual([passes(spec, {"qty": q}) for q in (99, 100, 199, 200)],
                         [False, True, True, False])


class ValueRuleTests(SynchronousTestCase):
    def test_numericStringsCompareAsNumbers(self):
        """A numeric string in the data compares exactly as a decimal with a number bound."""
        self.assertTrue(passes({"price": 1.25}, {"price": "1.25"}))
        self.assertTrue(passes({"price": 1.25}, {"price": "1.2500"}))
        self.assertTrue(passes({"price": 0.1}, {"price": "0.1"}))
        self.assertFalse(passes({"price": 0.1}, {"price": "0.10000000000000001"}))
        self.assertTrue(passes({"price": {"gt": 0.1}}, {"price": "0.10000000000000001"}))
        self.assertTrue(passes({"price": {"lt": 2}}, {"price": "1.999999999999999999999999"}))
        self.assertTrue(passes({"price": {"gte": 100}}, {"price": "1e2"}))
        self.assertTrue(passes({"price": {"lt": 0}}, {"price": "-0.5"}))

    def test_notNumericStrings(self):
        """Strings that are no JSON number (or are too long) never pass a number test."""
        for text in ("", "abc", "1.", ".5", "+1", " 1", "1 ", "NaN", "Infinity", "1_000", "0x10",
                     "1" * 65):
            self.assertFalse(passes({"p": {"gte": 0}}, {"p": text}), text)
            self.assertFalse(passes({"p": {"in": [1]}}, {"p": text}), text)

    def test_floatsAndIntsExact(self):
        """Ints and floats compare exactly, also past 2**53 and against decimal bounds."""
        self.assertTrue(passes({"n": 1.0}, {"n": 1}))
        self.assertTrue(passes({"n": 1}, {"n": 1.0}))
        self.assertFalse(passes({"n": 2**53 + 1}, {"n": float(2**53)}))
        self.assertTrue(passes({"n": {"gt": 2**53}}, {"n": 2**53 + 1}))
        self.assertTrue(passes({"n": 0.1}, {"n": 0.1}))
        self.assertFalse(passes({"n": 0.1}, {"n": 0.30000000000000004 - 0.2}))
        self.assertTrue(passes({"n": {"lt": 0.1}}, {"n": 0.09999999999999999}))

    def test_preciseBound(self):
        """A bound more precise than a float (a Decimal) still compares exactly."""
        bound = Decimal("0.1000000000000000000001")
        self.assertTrue(passes({"n": {"gt": bound}}, {"n": "0.1000000000000000000002"}))
        self.assertFalse(passes({"n": {"gt": bound}}, {"n": 0.1}))
        self.assertTrue(passes({"n": {"lt": bound}}, {"n": 0.1}))
        self.assertTrue(passes({"n": {"gt": bound}}, {"n": 1.0}))

    def test_giantNumbers(self):
        """Numbers far beyond 64 bits and huge exponents compare without error."""
        self.assertTrue(passes({"n": {"gt": 10**300}}, {"n": 10**301}))
        self.assertTrue(passes({"n": {"gt": 10**300}}, {"n": 1e301}))
        self.assertTrue(passes({"n": {"gt": 10**300}}, {"n": "1e999999999999999999"}))
        self.assertFalse(passes({"n": {"gt": 0}}, {"n": "-1e-999999999999999999"}))
        self.assertTrue(passes({"n": 1e300}, {"n": 10**300}))
        self.assertTrue(passes({"n": 1e300}, {"n": 1e300}))
        self.assertTrue(passes({"n": 10**300}, {"n": 1e300}))
        self.assertFalse(passes({"n": 1e300}, {"n": int(1e300)}))
        self.assertFalse(passes({"n": 2**60}, {"n": float(2**60)}))
        self.assertTrue(passes({"n": {"gt": 2**60}}, {"n": float(2**60)}))  # 1.152921504606847e18

    def test_nonFiniteData(self):
        """NaN and infinities in the data compare like IEEE numbers, without error."""
        self.assertFalse(passes({"n": {"gte": 0}}, {"n": float("nan")}))
        self.assertFalse(passes({"n": {"lte": 0}}, {"n": float("nan")}))
        self.assertTrue(passes({"n": {"gt": 10**400}}, {"n": float("inf")}))
        self.assertTrue(passes({"n": {"lt": -(10**400)}}, {"n": float("-inf")}))
        self.assertFalse(passes({"n": {"gt": 10**400}}, {"n": float("nan")}))
        self.assertFalse(passes({"n": {"in": [1]}}, {"n": float("inf")}))
        self.assertTrue(passes({"n": {"gt": 0.5}}, {"n": float("inf")}))
        self.assertFalse(passes({"n": {"gt": Decimal("0.1000000000000000000001")}},
                                {"n": float("nan")}))

    def test_booleansAreNotNumbers(self):
        """true is not 1 and 0 is not false, either way round."""
        self.assertFalse(passes({"f": 1}, {"f": True}))
        self.assertFalse(passes({"f": {"gte": 0}}, {"f": False}))
        self.assertFalse(passes({"f": True}, {"f": 1}))
        self.assertFalse(passes({"f": False}, {"f": 0}))
        self.assertTrue(passes({"f": False}, {"f": False}))
        self.assertFalse(passes({"f": {"in": [1]}}, {"f": True}))
        self.assertFalse(passes({"f": {"in": [True]}}, {"f": 1}))

    def test_null(self):
        """null matches a present null only; a missing field is not null."""
        self.assertTrue(passes({"f": None}, {"f": None}))
        self.assertFalse(passes({"f": None}, {}))
        self.assertFalse(passes({"f": None}, {"f": 0}))
        self.assertFalse(passes({"f": {"in": ["x"]}}, {"f": None}))

    def test_stringBoundIsExact(self):
        """A string in the filter matches only that string, never a number."""
        self.assertTrue(passes({"p": "1.25"}, {"p": "1.25"}))
        self.assertFalse(passes({"p": "1.25"}, {"p": "1.250"}))
        self.assertFalse(passes({"p": "1.25"}, {"p": 1.25}))

    def test_objectsAndListsInData(self):
        """A field holding an object or a list passes no value test, only exists/ne."""
        for value in ({"a": 1}, [1], []):
            self.assertFalse(passes({"f": 1}, {"f": value}))
            self.assertFalse(passes({"f": {"gte": 0}}, {"f": value}))
            self.assertFalse(passes({"f": {"in": [1, "a"]}}, {"f": value}))
            self.assertTrue(passes({"f": {"ne": 1}}, {"f": value}))

    def test_dataNotAnObject(self):
        """Data that is not an object passes no filter, not even a negated one."""
        for data in (None, 1, "x", [{"a": 1}], True):
            self.assertFalse(passes({"a": 1}, data))
            self.assertFalse(passes({"not": {"a": 1}}, data))
            self.assertFalse(passes({"a": {"exists": False}}, data))


def _exact(value: object) -> Decimal | None:
    """The reference reading of a data value as a number (docs/protocol.md, "Filters")."""
    if type(value) is int:
        return Decimal(value)
    if type(value) is Decimal:
        return value
    if type(value) is float:
        return Decimal(repr(value)) if math.isfinite(value) else None
    if type(value) is str and len(value) <= 64 and re.fullmatch(
            r"-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?", value):
        return Decimal(value)
    return None


_REFERENCE = {"eq": operator.eq, "lt": operator.lt, "lte": operator.le, "gt": operator.gt,
              "gte": operator.ge}

numbers = st.one_of(
    st.integers(-(10**30), 10**30), st.integers(-1000, 1000), st.integers(2**53, 10**30),
    st.floats(allow_nan=False, allow_infinity=False),
    st.floats(-1000, 1000).map(lambda f: round(f, 3)),
    st.integers(-(2**62), 2**62).map(float))
bounds = st.one_of(numbers, st.decimals(allow_nan=False, allow_infinity=False, places=25))
numeric_strings = st.one_of(
    st.decimals(allow_nan=False, allow_infinity=False, places=4).map(str),
    numbers.map(lambda n: repr(n) if type(n) is int else repr(n).replace("e+", "e")),
    st.text("0123456789.-eE+", max_size=8))


class ReferenceTests(SynchronousTestCase):
    """The compiled comparisons (with their native shortcuts) against a plain Decimal reference."""

    @given(st.sampled_from(sorted(_REFERENCE)), bounds,
           st.one_of(numbers, numeric_strings, st.just(float("inf")), st.just(float("-inf"))))
    def test_comparisonsAgreeWithDecimals(self, op, bound, value):
        """Every comparison gives the verdict exact decimal arithmetic gives."""
        self.assertAgrees(op, bound, value)

    @given(st.sampled_from(sorted(_REFERENCE)), bounds, st.sampled_from([
        lambda b: float(b), lambda b: math.nextafter(float(b), math.inf),
        lambda b: math.nextafter(float(b), -math.inf), lambda b: int(b), lambda b: str(b),
        lambda b: int(b) + 1]))
    @example("eq", 123456789012345678901234567890, float)
    @example("lt", Decimal("0.1000000000000000000001"), float)
    def test_nearTheBound(self, op, bound, near):
        """Data right at or next to the bound (its float, the floats around it) agrees too."""
        value = near(bound)
        if type(value) is float and not math.isfinite(value):
            return
        self.assertAgrees(op, bound, value)

    def assertAgrees(self, op, bound, value):
        if value in (float("inf"), float("-inf")):
            want = _REFERENCE[op](Decimal(value), _exact(bound))
        else:
            number = _exact(value)
            want = number is not None and _REFERENCE[op](number, _exact(bound))
        self.assertEqual(passes({"f": {op: bound}}, {"f": value}), want, (op, bound, value))

    @given(st.lists(st.one_of(numbers, st.text(max_size=3)), min_size=1, max_size=5),
           st.one_of(numbers, numeric_strings, st.text(max_size=3)))
    def test_inAgreesWithDecimals(self, values, value):
        """in passes exactly when eq with one of its values passes."""
        want = any(passes({"f": v}, {"f": value}) for v in values)
        self.assertEqual(passes({"f": {"in": values}}, {"f": value}), want, (values, value))
