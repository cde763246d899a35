"""
Server-side filters on an event's data (issue 25, part 4): the grammar, its
validation and bounds, and its compilation into one small closure per
filter, interned per shard by a canonical key so that a filter many
connections share is compiled once and evaluated once per event.

The grammar (docs/protocol.md, "Filters", is the contract) tests top-level
fields of the event's C{data} object::

    {"side": "buy"}                        equality (shorthand of {"eq": ...})
    {"qty": {"gte": 100, "lt": 1000}}      eq ne lt lte gt gte in exists
    {"symbol": {"in": ["A", "B"]}}
    {"and": [...]} {"or": [...]} {"not": {...}}

Several fields in one object, or several operators on one field, must all
hold. Why this shape: it is small, JSON-native, and every spelling of the
same test normalizes to one tree (L{EventFilter.key}), so the plumbing can
intern filters whatever key order or shorthand clients use.

Numbers compare by value, exactly: ints and floats as Python compares them
(exact, no rounding), and a numeric string in the data (market data sends
C{"price":"1.25"}) as a C{decimal.Decimal} against the filter number's
shortest decimal form, so C{"1.25"} equals C{1.25} and C{"0.1"} equals
C{0.1}. A string in the filter matches only that string; booleans match only
booleans (never 0 or 1); C{null} only C{null}. A test on a missing field is
false (C{ne} included: "present and different"); C{{"exists": false}} and
C{not} are how to ask for absence. Data that is not an object matches no
filter.
"""

from __future__ import annotations

import json
import math
from decimal import Decimal
from typing import TYPE_CHECKING, Final

from odin_ws.shard.delivery.filtermatch import COMPARISONS, Matcher, Node, Scalar, build

if TYPE_CHECKING:
    from odin_ws.common.settings import LimitsSettings

#: Error codes (docs/protocol.md): a filter that does not follow the
#: grammar; one past the bounds below; a shard holding as many distinct
#: filters as it may (L{FilterPool}).
BAD_FILTER: Final = "bad_filter"
FILTER_TOO_LARGE: Final = "filter_too_large"
SERVER_FILTER_LIMIT: Final = "server_filter_limit"

#: Conditions in one filter (each field test and each and/or/not counts one).
MAX_NODES: Final = 32
#: and/or/not nested inside each other.
MAX_DEPTH: Final = 4
#: Values in one C{in} list.
MAX_IN_VALUES: Final = 64

_BOOLEAN_OPS: Final = frozenset(("and", "or", "not"))
_FIELD_OPS: Final = frozenset(("eq", "ne", "in", "exists", *COMPARISONS))



class FilterError(ValueError):
    """A filter refused: C{code} for programs (docs/protocol.md), C{message} for humans."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


class EventFilter:
    """
    One compiled filter. C{key} is canonical: two filters that test the same
    thing, however written, have the same key. C{matches(data)} takes the
    event's decoded C{data}.
    """

    __slots__ = ("key", "_match")

    def __init__(self, key: str, match: Matcher):
        self.key = key
        self._match = match

    def matches(self, data: object) -> bool:
        """Whether an event whose decoded C{data} is this passes; non-objects never do."""
        return data.__class__ is dict and self._match(data)  # a dict subclass is no JSON object

    def __repr__(self) -> str:
        return f"<EventFilter {self.key}>"


def compile_filter(spec: object, max_bytes: int = 1024) -> EventFilter:
    """
    The filter C{spec} (a decoded JSON value) compiled, or L{FilterError}:
    C{bad_filter} for what breaks the grammar, C{filter_too_large} past
    C{max_bytes} (its compact UTF-8 JSON), L{MAX_NODES}, L{MAX_DEPTH} or
    L{MAX_IN_VALUES}.
    """
    tree = normalize(spec, max_bytes)
    return EventFilter(canonical_key(tree), build(tree))


class FilterPool:
    """
    The distinct filters of one shard, interned by key with a count of their
    holders: C{acquire} the same filter a thousand times and it is compiled
    (and evaluated per event) once. At most C{max_filters} distinct ones
    (C{limits.max_shard_filters}): past it C{acquire} refuses a new one
    (C{server_filter_limit}) while those already held are still shared.
    """

    def __init__(self, max_filters: int, max_bytes: int = 1024):
        self.max_filters = max_filters
        self.max_bytes = max_bytes
        self._filters: dict[str, EventFilter] = {}
        self._holders: dict[str, int] = {}

    @classmethod
    def from_limits(cls, limits: LimitsSettings) -> FilterPool:
        """A pool bounded by C{limits.max_shard_filters} and C{limits.max_filter_bytes}."""
        return cls(limits.max_shard_filters, limits.max_filter_bytes)

    def reconfigure(self, limits: LimitsSettings) -> None:
        """
        New bounds on reload. Filters already held stay (their subscriptions
        were accepted); the bounds apply to the next C{acquire}.
        """
        self.max_filters = limits.max_shard_filters
        self.max_bytes = limits.max_filter_bytes

    def acquire(self, spec: object) -> EventFilter:
        """The interned filter for C{spec}, one more holder counted; L{FilterError} if refused."""
        tree = normalize(spec, self.max_bytes)
        key = canonical_key(tree)
        held = self._filters.get(key)
        if held is None:
            if len(self._filters) >= self.max_filters:
                raise FilterError(SERVER_FILTER_LIMIT, (
                    f"this server holds {self.max_filters} distinct filters "
                    "(limits.max_shard_filters); use one already in use or none"))
            held = self._filters[key] = EventFilter(key, build(tree))
            self._holders[key] = 0
        self._holders[key] += 1
        return held

    def release(self, event_filter: EventFilter) -> None:
        """One holder of C{event_filter} gone; the last one's release forgets it."""
        key = event_filter.key
        if self._filters.get(key) is not event_filter:
            raise KeyError(f"{event_filter!r} is not held in this pool")
        self._holders[key] -= 1
        if not self._holders[key]:
            del self._filters[key], self._holders[key]

    def holders(self, event_filter: EventFilter) -> int:
        """How many acquires of C{event_filter} are not released yet (0 if not held)."""
        return self._holders.get(event_filter.key, 0)

    def __len__(self) -> int:
        return len(self._filters)


# -- validation and normal form (filtermatch.py says what it is) -------------


class _Budget:
    """What is left of one filter's bounds while it is walked (fails fast)."""

    __slots__ = ("nodes", "bytes")

    def __init__(self, max_bytes: int):
        self.nodes = MAX_NODES
        self.bytes = max_bytes

    def node(self) -> None:
        self.nodes -= 1
        if self.nodes < 0:
            raise FilterError(FILTER_TOO_LARGE, f"a filter has at most {MAX_NODES} conditions")

    def spend(self, size: int) -> None:
        self.bytes -= size
        if self.bytes < 0:
            raise FilterError(FILTER_TOO_LARGE, "the filter's JSON is too long (limits.max_filter_bytes)")


def normalize(spec: object, max_bytes: int = 1024) -> Node:
    """The normal form of C{spec}, validated and bounded (L{compile_filter} says how)."""
    return _condition(spec, _Budget(max_bytes), 0)


def _condition(spec: object, budget: _Budget, depth: int) -> Node:
    """An object of conditions: fields and and/or/not, all of which must hold."""
    if spec.__class__ is not dict:
        raise FilterError(BAD_FILTER, f"a filter is a JSON object, not {_kind(spec)}")
    assert isinstance(spec, dict)
    if not spec:
        raise FilterError(BAD_FILTER, "an empty filter object tests nothing")
    budget.spend(2 * len(spec) + 1)  # the braces, the colons and commas
    parts: list[Node] = []
    for name, value in spec.items():
        budget.spend(_json_size(_key(name)))
        if name in _BOOLEAN_OPS:
            budget.node()
            if depth >= MAX_DEPTH:
                raise FilterError(FILTER_TOO_LARGE, f"and/or/not nest at most {MAX_DEPTH} deep")
            parts.append(_boolean(name, value, budget, depth + 1))
        else:
            parts.extend(_field(name, value, budget))
    return _join("and", parts)


def _boolean(op: str, value: object, budget: _Budget, depth: int) -> Node:
    if op == "not":
        return _negate(_condition(value, budget, depth))
    if value.__class__ is not list or not value:
        raise FilterError(BAD_FILTER, f'"{op}" takes a non-empty list of filter objects')
    assert isinstance(value, list)
    budget.spend(1 + len(value))
    return _join(op, [_condition(item, budget, depth) for item in value])


def _field(name: str, value: object, budget: _Budget) -> list[Node]:
    """The tests on one field: a scalar (equality) or an object of operators."""
    if value.__class__ is not dict:
        budget.node()
        return [(name, "eq", _scalar(value, name, "eq", budget))]
    assert isinstance(value, dict)
    if not value:
        raise FilterError(BAD_FILTER, f'field "{_cut(name)}": an empty operator object')
    budget.spend(2 * len(value) + 1)
    tests: list[Node] = []
    for op, bound in value.items():
        budget.spend(_json_size(_key(op)))
        budget.node()
        if op not in _FIELD_OPS:
            raise FilterError(BAD_FILTER, (
                f'field "{_cut(name)}": unknown operator "{_cut(op)}" (one of '
                f'{", ".join(sorted(_FIELD_OPS))}; "and"/"or"/"not" go outside fields)'))
        if op == "in":
            tests.append((name, op, _values(bound, name, budget)))
        elif op == "exists":
            if bound.__class__ is not bool:
                raise FilterError(BAD_FILTER, f'field "{_cut(name)}": "exists" takes true or false')
            budget.spend(5)
            tests.append((name, op, bound))
        else:
            scalar = _scalar(bound, name, op, budget)
            if op in COMPARISONS and scalar.__class__ is not Decimal:
                raise FilterError(BAD_FILTER, (
                    f'field "{_cut(name)}": "{op}" compares with a number '
                    f"(write 1.25, not \"1.25\": numeric strings in events compare as numbers)"))
            tests.append((name, op, scalar))
    return tests


def _values(bound: object, name: str, budget: _Budget) -> tuple[Scalar, ...]:
    if bound.__class__ is not list or not bound:
        raise FilterError(BAD_FILTER, f'field "{_cut(name)}": "in" takes a non-empty list of values')
    assert isinstance(bound, list)
    if len(bound) > MAX_IN_VALUES:
        raise FilterError(FILTER_TOO_LARGE, f'an "in" list holds at most {MAX_IN_VALUES} values')
    budget.spend(1 + len(bound))
    values = {_scalar_key(v): v for v in (_scalar(item, name, "in", budget) for item in bound)}
    return tuple(values[k] for k in sorted(values))


def _scalar(value: object, name: str, op: str, budget: _Budget) -> Scalar:
    """A filter's value checked and made exact: numbers become Decimal."""
    cls = value.__class__
    if cls is str:
        assert isinstance(value, str)
        budget.spend(_json_size(json.dumps(value, ensure_ascii=False)))
        return value
    if cls is bool or value is None:
        budget.spend(5 if value is False else 4)
        return value  # type: ignore[return-value]
    if cls is int or cls is float or cls is Decimal:
        assert isinstance(value, int | float | Decimal)
        if cls is int:
            # Before str(): a giant int must fail on the bound, not on
            # Python's int-to-str digit limit.
            if value.bit_length() > 4 * budget.bytes + 8:  # type: ignore[union-attr]
                raise FilterError(FILTER_TOO_LARGE, "the filter's JSON is too long (limits.max_filter_bytes)")
            exact = Decimal(value)
        elif cls is float:
            if not math.isfinite(value):
                raise FilterError(BAD_FILTER, f'field "{_cut(name)}": numbers must be finite')
            # Its shortest decimal form: what the client wrote, for a float
            # that came out of JSON text (1.25, not 1.25000000000000000001...).
            exact = Decimal(repr(value))
        else:
            exact = value  # type: ignore[assignment]
            if not exact.is_finite():
                raise FilterError(BAD_FILTER, f'field "{_cut(name)}": numbers must be finite')
        budget.spend(len(str(exact)))
        return _plain(exact)
    raise FilterError(BAD_FILTER, (
        f'field "{_cut(name)}": "{_cut(op)}" takes a string, number, true, false or null'
        f", not {_kind(value)}"))


def _plain(number: Decimal) -> Decimal:
    """C{number} without trailing zeros (1.50 -> 1.5, 1E+2 -> 100): one spelling per value."""
    sign, digits, exponent = number.as_tuple()
    assert isinstance(exponent, int)
    if not any(digits):
        return Decimal(0)
    end = len(digits)
    while digits[end - 1] == 0:
        end -= 1
    exponent += len(digits) - end
    return Decimal((sign, digits[:end], exponent))


def _join(op: str, parts: list[Node]) -> Node:
    """and/or of C{parts}: nested ones of the same kind flattened, sorted, duplicates dropped."""
    flat: dict[str, Node] = {}
    for part in parts:
        for child in (part[1] if part[0] == op and len(part) == 2 else [part]):
            flat.setdefault(canonical_key(child), child)
    if len(flat) == 1:
        return next(iter(flat.values()))
    return (op, [flat[k] for k in sorted(flat)])


def _negate(node: Node) -> Node:
    """not of C{node}; not of not is the node itself."""
    if node[0] == "not" and len(node) == 2:
        return node[1]  # type: ignore[no-any-return]
    return ("not", node)


def canonical_key(node: Node) -> str:
    """The compact JSON of the normal form, itself a valid filter: equal filters, equal keys."""
    if len(node) == 2:
        op, arg = node
        if op == "not":
            return f'{{"not":{canonical_key(arg)}}}'
        return f'{{"{op}":[{",".join(canonical_key(c) for c in arg)}]}}'
    name, op, value = node
    if op == "in":
        text = "[" + ",".join(_scalar_json(v) for v in value) + "]"
    else:
        text = _scalar_json(value)
    return f'{{{_key(name)}:{{"{op}":{text}}}}}'


def _scalar_json(value: Scalar) -> str:
    if value.__class__ is Decimal:
        return format(value, "f")
    return json.dumps(value, ensure_ascii=False)


def _scalar_key(value: Scalar) -> str:
    """A sort key for C{in} values: by type first, so 1 and "1" stay apart."""
    return f"{type(value).__name__}:{_scalar_json(value)}"


def _key(name: object) -> str:
    if name.__class__ is not str:
        raise FilterError(BAD_FILTER, f"object keys must be strings, not {_kind(name)}")
    return json.dumps(name, ensure_ascii=False)


def _json_size(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def _kind(value: object) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
            int: "a number", float: "a number", type(None): "null"}.get(
        value.__class__, f"a {type(value).__name__} (not JSON)")


def _cut(text: object, width: int = 40) -> str:
    text = str(text)
    return text if len(text) <= width else text[:width] + "..."
