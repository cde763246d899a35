"""
The subscription options of one shard's clients (docs/protocol.md,
"Subscription options"): a subscribe's C{delta}, C{max_rate} and C{filter}
turned into a L{Variant}, held in the L{VariantIndex} that the delivery's
L{VariantFeed} reads, under the rules a session applies once for every
transport:

  - one variant per channel and connection: a pattern overlapping one the
    connection holds with other options is refused (C{options_conflict}),
    else it would get those events twice, in two shapes;
  - filters are compiled and interned per shard (L{FilterPool}, at most
    C{limits.max_shard_filters} distinct ones, C{server_filter_limit}), and
    one connection may carry at most C{limits.max_filters_per_connection}
    distinct ones (C{too_many_filters}); a connection holds each of its
    filters once in the pool, whatever the number of its patterns using it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from odin_ws.common.events import Event
from odin_ws.shard.clients import messages
from odin_ws.shard.delivery.filters import EventFilter, FilterError, FilterPool
from odin_ws.shard.delivery.subscriptions import Pattern, SubscriptionIndex
from odin_ws.shard.delivery.variantfeed import event_data
from odin_ws.shard.delivery.variants import (
    PLAIN,
    Variant,
    VariantIndex,
    conflict,
    holder_view,
    overlaps,
)

if TYPE_CHECKING:
    from odin_ws.common.settings import LimitsSettings
    from odin_ws.shard.delivery.variantfeed import VariantFeed


class SubscriptionOptions:
    """
    The shard's subscriptions with options and their filters: what a
    session asks (L{variant}, L{check}, L{add}, L{remove}, L{remove_all}).
    """

    def __init__(self, limits: LimitsSettings, index: VariantIndex, feed: VariantFeed):
        self.index = index
        self.feed = feed
        self.filters = FilterPool(limits.max_shard_filters, limits.max_filter_bytes)
        self.limits = limits

    def reconfigure(self, limits: LimitsSettings) -> None:
        """Take reloaded bounds (filters held stay held)."""
        self.limits = limits
        self.filters.max_filters = limits.max_shard_filters
        self.filters.max_bytes = limits.max_filter_bytes

    def prepare(self, subscriber: Any, plain: SubscriptionIndex, msg: messages.Subscribe,
                limit: int) -> tuple[Variant, list[Pattern]]:
        """
        What C{msg} asks of C{subscriber}'s subscriptions (C{plain}: the
        shard's index of plain ones): its variant (a filter acquired:
        L{release} it if the subscribe goes no further, else L{commit}) and
        the patterns it does not hold yet, within C{limit} subscriptions.

        @raise messages.ClientError: refused (nothing is held for it then).
        """
        variant = self.variant(msg, subscriber)
        patterns = [(c.token, c.event_type) for c in msg.channels]
        try:
            self.check(subscriber, plain, patterns, variant, msg.id)
            index = self.index
            new = [p for p in patterns if not plain.holds(subscriber, *p)
                   and index.variant_of(subscriber, p) is None]
            if plain.count(subscriber) + index.count(subscriber) + len(new) > limit:
                raise messages.ClientError(messages.TOO_MANY_SUBSCRIPTIONS, "a connection may "
                                           f"hold at most {limit} subscriptions", msg.id)
        except messages.ClientError:
            self.release(variant)
            raise
        return variant, new

    def commit(self, subscriber: Any, plain: SubscriptionIndex, new: list[Pattern],
               variant: Variant, address: str | None) -> None:
        """
        Hold L{prepare}'s C{new} patterns with C{variant}: in C{plain} for
        a subscribe without options, here otherwise.

        @raise odin_ws.shard.delivery.subscriptions.BudgetExceeded: no room.
        """
        if variant.plain:
            plain.add_all(subscriber, new, address)
        else:
            self.add(subscriber, new, variant, address)

    def patterns_of(self, subscriber: Any, plain: SubscriptionIndex) -> set[Pattern]:
        """Every pattern C{subscriber} holds, plain (in C{plain}) or with options."""
        return plain.patterns_of(subscriber) | self.index.patterns_of(subscriber)

    def variant(self, msg: messages.Subscribe, subscriber: Any) -> Variant:
        """
        The variant C{msg} asks for; its filter (if any) is acquired in the
        pool for C{subscriber}: L{release} it if the subscribe goes no further.

        @raise messages.ClientError: C{bad_filter}, C{filter_too_large},
            C{server_filter_limit}, C{too_many_filters}.
        """
        if msg.filter is None:
            return Variant(msg.delta, msg.max_rate)
        try:
            compiled = self.filters.acquire(msg.filter)
        except FilterError as e:
            raise messages.ClientError(e.code, e.message, msg.id) from None
        keys = {v.filter_key for v in self.index.held(subscriber).values() if v.filter_key}
        if compiled.key not in keys and len(keys) >= self.limits.max_filters_per_connection:
            self.filters.release(compiled)
            raise messages.ClientError(
                messages.TOO_MANY_FILTERS, "a connection may carry at most "
                f"{self.limits.max_filters_per_connection} distinct filters", msg.id)
        return Variant(msg.delta, msg.max_rate, compiled.key, compiled)

    @staticmethod
    def keeps(variant: Variant) -> Callable[[Event], bool] | None:
        """Which events C{variant}'s filter passes (None: no filter), for replays and snapshots."""
        event_filter = variant.filter
        if event_filter is None:
            return None
        return lambda event: event_filter.matches(event_data(event))

    def catchup_keeps(self, subscriber: Any) -> Callable[[Event], bool] | None:
        """
        Which events a slow client's catch-up sends C{subscriber} (None:
        every one matching its patterns): those its filters pass, for the
        channels it holds with a filter. Options never overlap on one
        connection (C{options_conflict}), so any held pattern matching an
        event gives its variant.
        """
        filtered = [(p, keep) for p, v in self.index.held(subscriber).items()
                    if (keep := self.keeps(v)) is not None]
        if not filtered:
            return None

        def keeps(event: Event) -> bool:
            channel = (event.token, event.event_type)
            for pattern, keep in filtered:
                if overlaps(pattern, channel):
                    return keep(event)
            return True
        return keeps

    def release(self, variant: Variant) -> None:
        """Give back the filter L{variant} acquired for a subscribe that was refused."""
        if variant.filter is not None:
            self.filters.release(variant.filter)

    def check(self, subscriber: Any, plain: SubscriptionIndex, patterns: Iterable[Pattern],
              variant: Variant, msg_id: messages.MessageId) -> None:
        """
        @raise messages.ClientError: C{options_conflict}: one of C{patterns}
            overlaps a pattern C{subscriber} holds (in C{plain} or here)
            with other options.
        """
        held = holder_view(plain.patterns_of(subscriber), self.index.held(subscriber))
        clash = conflict(held, patterns, variant)
        if clash is not None:
            (token, event_type), other = clash
            raise messages.ClientError(
                messages.OPTIONS_CONFLICT, f"odin.token.{token}.{event_type} is held with "
                f"{other.describe()}; unsubscribe it first to change the options", msg_id)

    def add(self, subscriber: Any, patterns: list[Pattern], variant: Variant,
            address: str | None) -> None:
        """
        Hold C{patterns} with C{variant} (all or none; its filter was
        acquired by L{variant} and is released here if the connection held
        it already, or if nothing is added).

        @raise odin_ws.shard.delivery.subscriptions.BudgetExceeded: no room.
        """
        had = self._holds_filter(subscriber, variant.filter)
        try:
            added = self.index.add_all(subscriber, patterns, variant, address)
        except Exception:
            self.release(variant)
            raise
        if had or not added:
            self.release(variant)
        if added:
            self.feed.unsynced(subscriber, variant)

    def remove(self, subscriber: Any, token: str, event_type: str) -> bool:
        """Drop one pattern of C{subscriber} (False: not held with options)."""
        variant = self.index.remove(subscriber, token, event_type)
        if variant is None:
            return False
        self._dropped(subscriber, variant)
        return True

    def remove_all(self, subscriber: Any) -> None:
        """Drop every pattern C{subscriber} holds with options (it closed)."""
        variants = set(self.index.remove_all(subscriber))
        filters = {v.filter_key: v.filter for v in variants if v.filter is not None}
        for event_filter in filters.values():
            self.filters.release(event_filter)
        self._forget(subscriber, variants)

    def _dropped(self, subscriber: Any, variant: Variant) -> None:
        if variant.filter is not None and not self._holds_filter(subscriber, variant.filter):
            self.filters.release(variant.filter)
        self._forget(subscriber, {variant})

    def _forget(self, subscriber: Any, variants: set[Variant]) -> None:
        for variant in variants:
            self.feed.unsynced(subscriber, variant)
        if any(not self.index.holds_variant(v) for v in variants):
            self.feed.prune()

    def _holds_filter(self, subscriber: Any, event_filter: EventFilter | None) -> bool:
        if event_filter is None:
            return False
        key = event_filter.key
        return any(v.filter_key == key for v in self.index.held(subscriber).values())


__all__ = ["PLAIN", "SubscriptionOptions"]
