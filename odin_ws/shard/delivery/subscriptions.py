"""
The subscription index of one shard: which subscribers (connections) hold
which channel patterns, and which of them an event must reach.

A pattern is C{(token, event_type)} where either side may be
L{odin_ws.common.channels.WILDCARD}. Patterns live in four buckets by shape, so
matching one event costs at most four dict lookups whatever the number of
subscriptions::

    exact     (token, type)   odin.token.ABC.trade
    by token  (token, *)      odin.token.ABC.*
    by type   (*, type)       odin.token.*.trade
    all       (*, *)          odin.token.*.*

Per-pattern state belongs here, in L{PatternBucket}, not in connections: the
planned per-channel history buffer hangs off this index (it must outlive an
emptied bucket, so it will sit in its own map keyed by concrete channel,
owned by the index, next to these buckets).

The index also owns the shard's subscription budget
(C{limits.max_shard_subscriptions}, C{limits.max_shard_subscription_bytes}):
a subscribe that would take the shard past either is refused whole
(L{BudgetExceeded}), so what anonymous clients can pin in memory is bounded
per shard, whatever the number of connections and addresses they use. One
client address may hold only a share of it (C{limits.ip_subscription_share}),
so a few addresses cannot take it all and refuse everyone else (issue 23, M2).
"""

from __future__ import annotations

from collections.abc import Collection, Hashable, Iterable
from typing import TYPE_CHECKING

from odin_ws.common.channels import WILDCARD

if TYPE_CHECKING:
    from odin_ws.common.settings import LimitsSettings

Subscriber = Hashable
Pattern = tuple[str, str]

#: What the budget counts per subscription (one subscriber holding one
#: pattern) besides the length of its token and event type: its entry in
#: the pattern's bucket, its pattern tuple, its share of the subscriber's
#: record and the two strings' headers. tracemalloc measures 268-276 B
#: (tests/shard/delivery/test_subscriptions.py keeps the figure honest).
SUBSCRIPTION_BYTES = 280
#: ... and per distinct pattern (the first subscriber to hold it): its
#: bucket and the key of the bucket's map; measured 340-355 B. A
#: subscription to a pattern nobody else holds thus costs ~640 B plus its
#: name (the issue's 714 B per distinct subscription, with longer names).
PATTERN_BYTES = 360

#: The error code a subscribe refused by the budget gets (docs/protocol.md).
BUDGET_EXCEEDED = "server_subscription_limit"


class BudgetExceeded(Exception):
    """A subscribe would take the shard past its subscription budget; nothing was added."""

    code = BUDGET_EXCEEDED

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

class SubscriptionBudget:
    """
    The shard's subscription budget (C{limits.max_shard_subscriptions} and
    C{limits.max_shard_subscription_bytes}): one count for every index that
    shares it, the WebSocket subscriptions and the event streams'. Each
    index counted only its own before, so together they could hold twice
    the bound (issue 23, M4). Unbounded without limits (a bare index).

    Per client address, the same two counts (C{by_address}: address ->
    C{[subscriptions, bytes]}), each held to C{limits.ip_subscription_share}
    of the shard's: four addresses filled one pool before, and a fifth's
    legitimate subscribe was refused (issue 23, M2).
    """

    __slots__ = ("max_total", "max_bytes", "total", "bytes", "max_address_total",
                 "max_address_bytes", "by_address")

    def __init__(self, limits: LimitsSettings | None = None) -> None:
        self.total = 0
        self.bytes = 0
        self.max_total: int | None = None
        self.max_bytes: int | None = None
        self.max_address_total: int | None = None
        self.max_address_bytes: int | None = None
        self.by_address: dict[str, list[int]] = {}
        if limits is not None:
            self.reconfigure(limits)

    def reconfigure(self, limits: LimitsSettings) -> None:
        """
        Take a (reloaded) budget. Subscriptions already held stay; only new
        ones are refused while the shard (or an address) is over it.
        """
        self.max_total = limits.max_shard_subscriptions
        self.max_bytes = limits.max_shard_subscription_bytes
        share = limits.ip_subscription_share
        self.max_address_total = max(1, int(self.max_total * share))
        self.max_address_bytes = int(self.max_bytes * share)

    def check(self, count: int, extra_bytes: int, address: str | None = None) -> None:
        """
        @param address: the client address the subscriptions would count
            for (None: the shard's budget only).
        @raise BudgetExceeded: C{count} more subscriptions of C{extra_bytes}
            do not fit the shard's budget or C{address}'s share.
        """
        if self.max_total is not None and self.total + count > self.max_total:
            raise BudgetExceeded(f"this server holds as many subscriptions as it may "
                                 f"({self.max_total}); try again later")
        if self.max_bytes is not None and self.bytes + extra_bytes > self.max_bytes:
            raise BudgetExceeded(f"this server holds as many subscriptions as it may "
                                 f"({self.max_bytes} bytes); try again later")
        if address is None or self.max_address_total is None:
            return
        held_total, held_bytes = self.by_address.get(address, (0, 0))
        if held_total + count > self.max_address_total or \
                held_bytes + extra_bytes > (self.max_address_bytes or 0):
            raise BudgetExceeded(f"this address holds as many subscriptions on this server as "
                                 f"one address may ({self.max_address_total}, "
                                 f"{self.max_address_bytes} bytes); try again later")

    def charge(self, address: str | None, count: int, size: int) -> None:
        """Count (or, negative, release) C{count} subscriptions of C{size} bytes."""
        self.total += count
        self.bytes += size
        if address is None:
            return
        held = self.by_address.get(address)
        if held is None:
            held = self.by_address[address] = [0, 0]
        held[0] += count
        held[1] += size
        if not held[0]:
            del self.by_address[address]


# What match() returns when nothing matches: shared, immutable.
_NOTHING: Collection[Subscriber] = frozenset()

# A subscriber's patterns are a tuple while there are at most this many (one
# pattern: 48 bytes; a set is 216 bytes however few it holds), a set past it,
# where membership tests must not grow with the count.
_FEW = 8


class PatternBucket(dict[Subscriber, None]):
    """
    The subscribers of one pattern, as the keys of an insertion-ordered dict
    (values unused). A dict subclass so that matching hands out its keys view
    without an extra attribute hop; the slots are where per-pattern state goes.
    C{view} is that keys view, made once: live, read-only, and the same object
    for every match of the bucket, so the fan-out can tell that consecutive
    events reach the same subscribers.
    """

    __slots__ = ("token", "event_type", "view")

    def __init__(self, token: str, event_type: str):
        super().__init__()
        self.token = token
        self.event_type = event_type
        self.view = self.keys()

    def __repr__(self) -> str:
        return f"<PatternBucket {self.token}.{self.event_type} x{len(self)}>"


class SubscriptionIndex:
    """
    Channel patterns to subscribers (any hashable object, e.g. a connection).

    L{match} may return a live, read-only view of the index's own storage to
    avoid a copy per event: consume it before the next L{add}/L{remove}/
    L{remove_all} (mutating while iterating raises C{RuntimeError}; callers
    that may drop a subscriber during delivery must collect and remove after).
    """

    def __init__(self, limits: LimitsSettings | None = None,
                 budget: SubscriptionBudget | None = None) -> None:
        self._exact: dict[Pattern, PatternBucket] = {}
        self._by_token: dict[str, PatternBucket] = {}
        self._by_type: dict[str, PatternBucket] = {}
        self._all: PatternBucket | None = None
        self._patterns: dict[Subscriber, tuple[Pattern, ...] | set[Pattern]] = {}
        #: The client address each subscriber's subscriptions count for.
        self._addresses: dict[Subscriber, str] = {}
        self._total = 0
        self._bytes = 0
        #: The budget, shared with the shard's other index (see L{SubscriptionBudget}).
        self.budget = budget if budget is not None else SubscriptionBudget(limits)

    def reconfigure(self, limits: LimitsSettings) -> None:
        """Take a (reloaded) budget (L{SubscriptionBudget.reconfigure})."""
        self.budget.reconfigure(limits)

    # -- lookups of one bucket by pattern shape

    def _bucket(self, token: str, event_type: str) -> PatternBucket | None:
        if token == WILDCARD:
            if event_type == WILDCARD:
                return self._all
            return self._by_type.get(event_type)
        if event_type == WILDCARD:
            return self._by_token.get(token)
        return self._exact.get((token, event_type))

    def _new_bucket(self, token: str, event_type: str) -> PatternBucket:
        bucket = PatternBucket(token, event_type)
        if token == WILDCARD:
            if event_type == WILDCARD:
                self._all = bucket
            else:
                self._by_type[event_type] = bucket
        elif event_type == WILDCARD:
            self._by_token[token] = bucket
        else:
            self._exact[(token, event_type)] = bucket
        return bucket

    def _drop_bucket(self, token: str, event_type: str) -> None:
        # Empty buckets go, so memory follows live subscriptions, not churn.
        if token == WILDCARD:
            if event_type == WILDCARD:
                self._all = None
            else:
                del self._by_type[event_type]
        elif event_type == WILDCARD:
            del self._by_token[token]
        else:
            del self._exact[(token, event_type)]

    # -- mutation

    def add(self, subscriber: Subscriber, token: str, event_type: str) -> bool:
        """
        Subscribe C{subscriber} to the pattern (segments already validated,
        see L{odin_ws.common.channels.parse_pattern}). False if it already held it.

        @raise BudgetExceeded: the shard's budget has no room for it.
        """
        return self.add_all(subscriber, ((token, event_type),)) == 1

    def add_all(self, subscriber: Subscriber, patterns: Iterable[Pattern],
                address: str | None = None) -> int:
        """
        Subscribe C{subscriber} to every C{(token, event_type)} of
        C{patterns}, all or none: how many it did not hold yet.

        @param address: the client address C{subscriber}'s subscriptions
            count for (its share of the budget); a subscriber keeps the
            address of its first subscriptions.
        @raise BudgetExceeded: they would take the shard past its budget
            (count or bytes), or the address past its share; nothing was
            added.
        """
        held = self._patterns.get(subscriber, ())
        new = [p for p in dict.fromkeys(patterns) if p not in held]
        if not new:
            return 0
        address = self._addresses.get(subscriber, address)
        self._check_budget(new, address)
        if address is not None:
            self._addresses[subscriber] = address
        for token, event_type in new:
            self._add(subscriber, token, event_type)
        return len(new)

    @staticmethod
    def cost(token: str, event_type: str) -> int:
        """Bytes the budget counts for one subscription to the pattern (not the pattern's own)."""
        return SUBSCRIPTION_BYTES + len(token) + len(event_type)

    def check_room(self, patterns: Iterable[Pattern], address: str | None = None) -> None:
        """
        Would a new subscriber's C{patterns} fit the budget and C{address}'s
        share? (An event stream asks before its C{200}.)

        @raise BudgetExceeded: they would not.
        """
        self._check_budget(list(dict.fromkeys(patterns)), address)

    def _check_budget(self, new: list[Pattern], address: str | None) -> None:
        extra = sum(self.cost(t, e) for t, e in new)
        fresh = {p for p in new if self._bucket(*p) is None}
        self.budget.check(len(new), extra + PATTERN_BYTES * len(fresh), address)

    def _add(self, subscriber: Subscriber, token: str, event_type: str) -> None:
        pattern = (token, event_type)
        held = self._patterns.get(subscriber, ())
        bucket = self._bucket(token, event_type)
        added = self.cost(token, event_type)
        if bucket is None:
            bucket = self._new_bucket(token, event_type)
            added += PATTERN_BYTES
        bucket[subscriber] = None
        self._bytes += added
        self.budget.charge(self._addresses.get(subscriber), 1, added)
        if isinstance(held, tuple):
            held += (pattern,)
            self._patterns[subscriber] = held if len(held) <= _FEW else set(held)
        else:
            held.add(pattern)
        self._total += 1

    def remove(self, subscriber: Subscriber, token: str, event_type: str) -> bool:
        """Drop one pattern of C{subscriber}. False if it did not hold it."""
        pattern = (token, event_type)
        held = self._patterns.get(subscriber, ())
        if pattern not in held:
            return False
        if isinstance(held, tuple):
            held = tuple(p for p in held if p != pattern)
            if held:
                self._patterns[subscriber] = held
        else:
            held.discard(pattern)
        self._unlink(subscriber, token, event_type)
        if not held:
            del self._patterns[subscriber]
            self._addresses.pop(subscriber, None)
        return True

    def remove_all(self, subscriber: Subscriber) -> int:
        """Drop every pattern of C{subscriber} (e.g. on disconnect); how many."""
        held = self._patterns.pop(subscriber, None)
        if not held:
            return 0
        for token, event_type in held:
            self._unlink(subscriber, token, event_type)
        self._addresses.pop(subscriber, None)
        return len(held)

    def _unlink(self, subscriber: Subscriber, token: str, event_type: str) -> None:
        bucket = self._bucket(token, event_type)
        assert bucket is not None, "a pattern held has its bucket"
        del bucket[subscriber]
        freed = self.cost(token, event_type)
        if not bucket:
            self._drop_bucket(token, event_type)
            freed += PATTERN_BYTES
        self._bytes -= freed
        self.budget.charge(self._addresses.get(subscriber), -1, -freed)
        self._total -= 1

    # -- queries

    def match(self, token: str, event_type: str) -> Collection[Subscriber]:
        """
        Everyone an event on C{odin.token.<token>.<event_type>} must reach,
        each once even when several of its patterns match. See the class
        docstring about the lifetime of the result.
        """
        exact = self._exact.get((token, event_type))
        by_token = self._by_token.get(token)
        by_type = self._by_type.get(event_type)
        everyone = self._all
        if by_token is None and by_type is None and everyone is None:
            # Exact channels only (clients following a few tokens): one bucket at most.
            return exact.view if exact is not None else _NOTHING
        found = None
        merged = None
        for bucket in (exact, by_token, by_type, everyone):
            if bucket is None:
                continue
            if found is None:
                found = bucket
            elif merged is None:
                # Only now, with a second non-empty bucket, is a copy needed.
                merged = set(found)
                merged.update(bucket)
            else:
                merged.update(bucket)
        if merged is not None:
            return merged
        if found is not None:
            return found.view
        return _NOTHING

    def bucket(self, token: str, event_type: str) -> PatternBucket | None:
        """The bucket of exactly this pattern (no wildcard expansion), if held."""
        return self._bucket(token, event_type)

    def patterns_of(self, subscriber: Subscriber) -> set[Pattern]:
        """A copy of the patterns C{subscriber} holds."""
        return set(self._patterns.get(subscriber, ()))

    def count(self, subscriber: Subscriber) -> int:
        """How many patterns C{subscriber} holds."""
        held = self._patterns.get(subscriber)
        return len(held) if held else 0

    def holds(self, subscriber: Subscriber, token: str, event_type: str) -> bool:
        """Does C{subscriber} hold exactly this pattern?"""
        held = self._patterns.get(subscriber)
        return held is not None and (token, event_type) in held

    @property
    def total(self) -> int:
        """Subscriptions held, summed over all subscribers."""
        return self._total

    @property
    def bytes(self) -> int:
        """What the budget counts for the subscriptions held (see L{SUBSCRIPTION_BYTES})."""
        return self._bytes

    @property
    def subscribers(self) -> int:
        """Distinct subscribers holding at least one pattern."""
        return len(self._patterns)

    def __len__(self) -> int:
        """Distinct patterns held by anyone."""
        return (len(self._exact) + len(self._by_token) + len(self._by_type)
                + (1 if self._all is not None else 0))

    def __repr__(self) -> str:
        return (f"<SubscriptionIndex patterns={len(self)} subscribers="
                f"{len(self._patterns)} total={self._total}>")
