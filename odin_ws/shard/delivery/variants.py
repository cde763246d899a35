"""
Subscriptions with options (docs/protocol.md, "Subscription options"):
C{delta}, C{max_rate}, C{filter}. Subscribers of a channel that asked for
the same options form one I{variant stream} of it, and everything done per
event for them (the filter, the throttle, the delta) is done once per
(channel, variant), never per connection
(L{odin_ws.shard.delivery.variantfeed}).

Why a second index beside the shard's L{SubscriptionIndex}: plain
subscriptions stay on the hot path as they are (one C{match}, one frame for
everyone); only events of channels some variant holds take the variant
path. The index is two levels of the same L{SubscriptionIndex} code: per
variant, its subscribers by pattern (sharing the shard's budget), and over
them, the variants by pattern, so matching an event costs four lookups plus
four per variant that holds a matching pattern, whatever the number of
connections.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from odin_ws.common.channels import WILDCARD
from odin_ws.shard.delivery.subscriptions import (
    Pattern,
    Subscriber,
    SubscriptionBudget,
    SubscriptionIndex,
)

if TYPE_CHECKING:
    from odin_ws.shard.delivery.filters import EventFilter


#: L{Variant.delta}: JSON Merge Patch deltas in the event's envelope.
MERGE_PATCH = "merge-patch"
#: L{Variant.delta}: compact delta frames (L{odin_ws.shard.delivery.compactdelta}).
COMPACT = "compact"


@dataclass(frozen=True, slots=True)
class Variant:
    """
    The options of a subscription. Equal options, equal variant: the
    filter counts by its canonical key (equal filters, equal key).
    """

    #: Deltas instead of whole events where they can, in this format
    #: (L{MERGE_PATCH}, L{COMPACT}; "": none).
    delta: str = ""
    #: Events per second at most (0: no cap).
    max_rate: float = 0.0
    #: The filter's canonical key ("": none).
    filter_key: str = ""
    #: The compiled filter (None: none); not part of the identity.
    filter: EventFilter | None = field(default=None, compare=False, hash=False)

    @property
    def plain(self) -> bool:
        """No option at all: the shard's plain subscriptions serve it."""
        return not (self.delta or self.max_rate or self.filter_key)

    def describe(self) -> str:
        """The options in a few words, for error messages."""
        parts = []
        if self.delta:
            parts.append(f"delta {self.delta}")
        if self.max_rate:
            parts.append(f"max_rate {self.max_rate:g}")
        if self.filter_key:
            parts.append("a filter")
        return ", ".join(parts) or "no options"


PLAIN = Variant()


def overlaps(a: Pattern, b: Pattern) -> bool:
    """Whether some channel matches both patterns."""
    return ((a[0] == b[0] or WILDCARD in (a[0], b[0]))
            and (a[1] == b[1] or WILDCARD in (a[1], b[1])))


class VariantIndex:
    """
    Channel patterns to variant streams to subscribers. A subscriber holds
    each pattern with one variant (L{variant_of}).
    """

    def __init__(self, budget: SubscriptionBudget) -> None:
        self.budget = budget
        #: Per variant, its subscribers by pattern.
        self._by_variant: dict[Variant, SubscriptionIndex] = {}
        #: The variants by pattern (a variant holds a pattern while a subscriber does).
        self._variants = SubscriptionIndex()
        #: Per subscriber, its variant per pattern.
        self._held: dict[Subscriber, dict[Pattern, Variant]] = {}

    @property
    def active(self) -> bool:
        """Whether any subscription with options is held (the delivery path asks per batch)."""
        return bool(self._held)

    def holds_variant(self, variant: Variant) -> bool:
        """Whether some subscriber holds a pattern with C{variant}."""
        return variant in self._by_variant

    def variants(self) -> Iterable[Variant]:
        """The variants held now."""
        return self._by_variant.keys()

    def add_all(self, subscriber: Subscriber, patterns: Iterable[Pattern], variant: Variant,
                address: str | None = None) -> int:
        """
        Subscribe C{subscriber} to C{patterns} with C{variant}, all or none
        (L{SubscriptionIndex.add_all}); patterns it holds already are left as
        they are.

        @raise odin_ws.shard.delivery.subscriptions.BudgetExceeded: no room.
        """
        index = self._by_variant.get(variant)
        if index is None:
            index = SubscriptionIndex(budget=self.budget)
        held = self._held.get(subscriber, {})
        new = [p for p in dict.fromkeys(patterns) if p not in held]
        fresh = [p for p in new if index.bucket(*p) is None]
        added = index.add_all(subscriber, new, address)
        if not added:
            return 0
        self._by_variant[variant] = index
        self._held.setdefault(subscriber, {}).update(dict.fromkeys(new, variant))
        for p in fresh:
            self._variants.add(variant, *p)
        return added

    def remove(self, subscriber: Subscriber, token: str, event_type: str) -> Variant | None:
        """Drop one pattern of C{subscriber}: the variant it held it with (None: not held)."""
        held = self._held.get(subscriber)
        pattern = (token, event_type)
        if held is None or pattern not in held:
            return None
        variant = held.pop(pattern)
        if not held:
            del self._held[subscriber]
        index = self._by_variant[variant]
        index.remove(subscriber, token, event_type)
        if index.bucket(token, event_type) is None:
            self._variants.remove(variant, token, event_type)
        if not index.total:
            del self._by_variant[variant]
        return variant

    def remove_all(self, subscriber: Subscriber) -> list[Variant]:
        """Drop every pattern of C{subscriber}: the variants it held them with."""
        held = self._held.get(subscriber)
        if not held:
            return []
        return [self.remove(subscriber, *p) for p in list(held)]  # type: ignore[misc]

    # -- queries

    def match(self, token: str, event_type: str) -> Collection[Variant]:
        """The variants some subscriber of which an event of this channel must reach."""
        # The subscribers of this index are variants.
        return self._variants.match(token, event_type)  # type: ignore[return-value]

    def subscribers(self, variant: Variant, token: str, event_type: str
                    ) -> Collection[Subscriber]:
        """Who gets an event of this channel in C{variant} (each once; a live view)."""
        index = self._by_variant.get(variant)
        if index is None:
            return ()
        return index.match(token, event_type)

    def everyone(self, token: str, event_type: str) -> set[Subscriber]:
        """Every subscriber an event of this channel reaches, whatever its variant."""
        out: set[Subscriber] = set()
        for variant in self.match(token, event_type):
            out.update(self.subscribers(variant, token, event_type))
        return out

    def variant_of(self, subscriber: Subscriber, pattern: Pattern) -> Variant | None:
        """The variant C{subscriber} holds C{pattern} with (None: it does not)."""
        return self._held.get(subscriber, {}).get(pattern)

    def held(self, subscriber: Subscriber) -> dict[Pattern, Variant]:
        """A copy of C{subscriber}'s patterns and their variants."""
        return dict(self._held.get(subscriber, {}))

    def patterns_of(self, subscriber: Subscriber) -> set[Pattern]:
        """A copy of the patterns C{subscriber} holds with options."""
        return set(self._held.get(subscriber, ()))

    def count(self, subscriber: Subscriber) -> int:
        """How many patterns C{subscriber} holds with options."""
        return len(self._held.get(subscriber, ()))

    @property
    def total(self) -> int:
        """Subscriptions with options held, over all subscribers."""
        return sum(index.total for index in self._by_variant.values())

    def __repr__(self) -> str:
        return f"<VariantIndex variants={len(self._by_variant)} subscribers={len(self._held)}>"


def conflict(held: dict[Pattern, Variant], patterns: Iterable[Pattern],
             variant: Variant) -> tuple[Pattern, Variant] | None:
    """
    A pattern of C{held} (a subscriber's patterns, plain ones as L{PLAIN})
    that overlaps one of C{patterns} with another variant, and its variant:
    the subscriber would get those events twice, in two shapes.
    """
    for p in patterns:
        for q, other in held.items():
            if other != variant and overlaps(p, q):
                return q, other
    return None


def holder_view(plain: Iterable[Pattern], optioned: dict[Pattern, Variant]) -> dict[Pattern, Any]:
    """A subscriber's plain patterns (as L{PLAIN}) and its patterns with options, in one map."""
    out: dict[Pattern, Any] = dict.fromkeys(plain, PLAIN)
    out.update(optioned)
    return out
