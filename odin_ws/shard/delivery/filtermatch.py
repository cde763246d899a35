"""
The compiled form of a filter (L{odin_ws.shard.delivery.filters}): one
closure per condition, built once per distinct filter, testing a decoded
C{data} dict with a dict lookup and a comparison or a set lookup.

It runs on a normal form the grammar module has validated: a tree of tuples,
C{("and"|"or", [children])}, C{("not", child)}, and C{(field, op, value)}
leaves where op is eq, ne, lt, lte, gt, gte, in or exists and the value a
scalar (numbers as exact Decimals), a tuple of scalars (in) or a bool
(exists). The number rules (exact, numeric strings as Decimals, a float as
its shortest decimal form) are the contract of docs/protocol.md, "Filters";
the native comparisons below are shortcuts that give the same verdicts.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable
from decimal import Decimal
from typing import Any, Final

Node = tuple[Any, ...]
Scalar = str | int | float | Decimal | bool | None
Matcher = Callable[[dict[str, Any]], bool]

COMPARISONS: Final = {"lt": operator.lt, "lte": operator.le, "gt": operator.gt,
                      "gte": operator.ge}
#: A data string longer than this is never read as a number (so a huge
#: string costs no Decimal parse per event).
MAX_NUMERIC_STRING: Final = 64
# JSON's number syntax, leading zeros allowed ("007"): what a numeric string is.
_NUMERIC: Final = re.compile(r"-?[0-9]+(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?").fullmatch
_MISSING: Final = object()


def data_number(value: str) -> Decimal | None:
    """A numeric string from an event's data as a Decimal, or None when it is no number."""
    if len(value) <= MAX_NUMERIC_STRING and _NUMERIC(value):
        return Decimal(value)
    return None


def _float_number(value: float) -> Decimal:
    """
    The exact number a finite float from an event's data stands for: its
    shortest decimal form (0.1 is 0.1, 1e300 is 10**300), what the JSON had
    for up to 15 significant digits.
    """
    return Decimal(repr(value))


def build(node: Node) -> Matcher:
    """The closure that tests a data dict against the normal form C{node}."""
    if len(node) == 2:
        op, arg = node
        if op == "not":
            inner = build(arg)
            return lambda data: not inner(data)
        children = tuple(build(c) for c in arg)
        return _either(children, decisive=op == "or")
    name, op, value = node
    if op == "exists":
        return (lambda data: name in data) if value else (lambda data: name not in data)
    if op == "in":
        return _member(name, value)
    test = _equal(name, value)
    if op == "eq":
        return test
    if op == "ne":
        return lambda data: name in data and not test(data)
    return _compare(name, COMPARISONS[op], value)


def _either(children: tuple[Matcher, ...], decisive: bool) -> Matcher:
    """and (C{decisive} False: the first part that fails decides) or or (True)."""
    if len(children) == 2:
        first, second = children
        if decisive:
            return lambda data: first(data) or second(data)
        return lambda data: first(data) and second(data)

    def match(data: dict[str, Any]) -> bool:
        for child in children:
            if child(data) == decisive:
                return decisive
        return not decisive

    return match


def _equal(name: str, value: Scalar) -> Matcher:
    if value.__class__ is str:
        return lambda data: data.get(name) == value
    if value is None:
        return lambda data: name in data and data[name] is None
    if value.__class__ is bool:
        return lambda data: data.get(name, _MISSING) is value
    return _compare(name, operator.eq, value)  # type: ignore[arg-type]


def _compare(name: str, op: Callable[[Any, Any], bool], bound: Decimal) -> Matcher:
    """
    C{op(data[name], bound)} for a number or numeric string in the data.
    Natively where that is exact: an int against the bound as an int (or
    as a float or Decimal), a float against the bound as a float when that
    float's shortest form is the bound (shortest forms order and equal like
    their floats); otherwise through Decimal, as numeric strings always go.
    """
    as_float = float(bound)
    exact_float = math.isfinite(as_float) and Decimal(repr(as_float)) == bound
    for_int: int | float | Decimal = (
        int(bound) if bound == bound.to_integral_value() else as_float if exact_float else bound)

    def match(data: dict[str, Any]) -> bool:
        value: Any = data.get(name)
        cls = value.__class__
        if cls is int:
            return op(value, for_int)
        if cls is float:
            if exact_float:
                return op(value, as_float)
            # NaN passes nothing (Decimal would raise on it); infinities order.
            return value == value and op(_float_number(value), bound)
        if cls is str:
            number = data_number(value)
            return number is not None and op(number, bound)
        return False

    return match


def _member(name: str, values: tuple[Scalar, ...]) -> Matcher:
    """C{in}: one set lookup per type, numbers as exact Decimals."""
    strings = frozenset(v for v in values if v.__class__ is str)
    numbers = frozenset(v for v in values if v.__class__ is Decimal)
    flags = frozenset(v for v in values if v is None or v.__class__ is bool)
    with_null = None in flags

    def match(data: dict[str, Any]) -> bool:
        value: Any = data.get(name, _MISSING)
        cls = value.__class__
        if cls is str:
            if value in strings:
                return True
            number = data_number(value) if numbers else None
            return number is not None and number in numbers
        if cls is int:
            return value in numbers  # Decimal(n) hashes and equals like n
        if cls is float:
            return math.isfinite(value) and _float_number(value) in numbers
        if cls is bool:
            return value in flags
        return with_null and value is None

    return match
