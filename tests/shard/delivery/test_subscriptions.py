"""
Tests for L{odin_ws.shard.delivery.subscriptions}.
"""

from __future__ import annotations

import gc
import tracemalloc
from collections.abc import Collection
from typing import cast

from twisted.trial.unittest import SynchronousTestCase

from odin_ws.shard.delivery.subscriptions import (
    PATTERN_BYTES,
    BudgetExceeded,
    PatternBucket,
    SubscriptionIndex,
)


class Conn:
    """A stand-in connection: hashable by identity, like the shard's."""

    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return f"<Conn {self.name}>"


class AddRemoveTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.index = SubscriptionIndex()
        self.a = Conn("a")
        self.b = Conn("b")

    def test_addReportsNovelty(self) -> None:
        """add() is True the first time a pattern is held, False after."""
        self.assertTrue(self.index.add(self.a, "ABC", "trade"))
        self.assertFalse(self.index.add(self.a, "ABC", "trade"))
        self.assertEqual(self.index.count(self.a), 1)
        self.assertEqual(self.index.total, 1)

    def test_removeReportsWhetherHeld(self) -> None:
        """remove() is True for a held pattern and False for any other."""
        self.index.add(self.a, "ABC", "trade")
        self.assertFalse(self.index.remove(self.a, "ABC", "price"))
        self.assertFalse(self.index.remove(self.b, "ABC", "trade"))
        self.assertTrue(self.index.remove(self.a, "ABC", "trade"))
        self.assertFalse(self.index.remove(self.a, "ABC", "trade"))
        self.assertEqual(self.index.total, 0)

    def test_removeWildcardDoesNotTouchConcrete(self) -> None:
        """Removing C{ABC.*} leaves the same subscriber's C{ABC.trade} alone."""
        self.index.add(self.a, "ABC", "trade")
        self.index.add(self.a, "ABC", "*")
        self.index.remove(self.a, "ABC", "*")
        self.assertEqual(self.index.patterns_of(self.a), {("ABC", "trade")})
        self.assertEqual(list(self.index.match("ABC", "trade")), [self.a])
        self.assertEqual(list(self.index.match("ABC", "price")), [])

    def test_patternsOfIsACopy(self) -> None:
        """Mutating what patterns_of() returns does not change the index."""
        self.index.add(self.a, "ABC", "trade")
        got = self.index.patterns_of(self.a)
        got.clear()
        self.assertEqual(self.index.patterns_of(self.a), {("ABC", "trade")})
        self.assertEqual(self.index.patterns_of(self.b), set())

    def test_removeAll(self) -> None:
        """remove_all() drops every pattern of one subscriber and says how many."""
        for pattern in [("ABC", "trade"), ("ABC", "*"), ("*", "trade"), ("*", "*")]:
            self.index.add(self.a, *pattern)
        self.index.add(self.b, "ABC", "trade")
        self.assertEqual(self.index.remove_all(self.a), 4)
        self.assertEqual(self.index.remove_all(self.a), 0)
        self.assertEqual(self.index.count(self.a), 0)
        self.assertEqual(self.index.total, 1)
        self.assertEqual(list(self.index.match("ABC", "trade")), [self.b])

    def test_countsAndLength(self) -> None:
        """total counts subscriptions, len() distinct patterns, subscribers holders."""
        self.index.add(self.a, "ABC", "trade")
        self.index.add(self.b, "ABC", "trade")
        self.index.add(self.a, "*", "*")
        self.assertEqual(self.index.total, 3)
        self.assertEqual(len(self.index), 2)
        self.assertEqual(self.index.subscribers, 2)
        self.assertTrue(self.index.holds(self.a, "*", "*"))
        self.assertFalse(self.index.holds(self.b, "*", "*"))


class BucketCleanupTests(SynchronousTestCase):
    def test_emptyBucketsAreDeleted(self) -> None:
        """
        Once the last subscriber of a pattern leaves, by remove() or
        remove_all(), no trace of the pattern stays in any bucket.
        """
        index = SubscriptionIndex()
        a, b = Conn("a"), Conn("b")
        patterns = [("ABC", "trade"), ("ABC", "*"), ("*", "trade"), ("*", "*")]
        for pattern in patterns:
            index.add(a, *pattern)
            index.add(b, *pattern)
        self.assertEqual(len(index), 4)
        for pattern in patterns:
            index.remove(a, *pattern)
        self.assertEqual(len(index), 4)
        index.remove_all(b)
        self.assertEqual(len(index), 0)
        self.assertEqual(index.subscribers, 0)
        for pattern in patterns:
            self.assertIsNone(index.bucket(*pattern))
        self.assertEqual((index._exact, index._by_token, index._by_type, index._all,
                          index._patterns), ({}, {}, {}, None, {}))

    def test_churnDoesNotGrow(self) -> None:
        """Many distinct subscribe/unsubscribe cycles leave the index empty."""
        index = SubscriptionIndex()
        for i in range(2000):
            conn = Conn(str(i))
            index.add(conn, f"T{i}", "trade")
            index.add(conn, f"T{i}", "*")
            index.add(conn, "*", f"type{i}")
            index.remove_all(conn)
        self.assertEqual((len(index), index.total, index.subscribers), (0, 0, 0))

    def test_bucketCarriesItsPattern(self) -> None:
        """Each pattern's bucket knows its pattern: the home of per-pattern state."""
        index = SubscriptionIndex()
        index.add(Conn("a"), "ABC", "*")
        bucket = index.bucket("ABC", "*")
        self.assertIsInstance(bucket, PatternBucket)
        self.assertEqual((bucket.token, bucket.event_type), ("ABC", "*"))


class MatchTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.index = SubscriptionIndex()

    def test_nothing(self) -> None:
        """An event nobody wants matches an empty, sized collection."""
        got = self.index.match("ABC", "trade")
        self.assertIsInstance(got, Collection)
        self.assertEqual(len(got), 0)

    def test_eachShape(self) -> None:
        """Each of the four pattern shapes matches exactly the events it names."""
        exact, token, etype, every = Conn("exact"), Conn("tok"), Conn("type"), Conn("all")
        self.index.add(exact, "ABC", "trade")
        self.index.add(token, "ABC", "*")
        self.index.add(etype, "*", "trade")
        self.index.add(every, "*", "*")
        self.assertEqual(set(self.index.match("ABC", "trade")),
                         {exact, token, etype, every})
        self.assertEqual(set(self.index.match("ABC", "price")), {token, every})
        self.assertEqual(set(self.index.match("XYZ", "trade")), {etype, every})
        self.assertEqual(set(self.index.match("XYZ", "price")), {every})

    def test_onePerSubscriberThroughSeveralPatterns(self) -> None:
        """
        A subscriber matching an event through two (or four) of its patterns
        is in the result once, so it gets one delivery.
        """
        a, b = Conn("a"), Conn("b")
        self.index.add(a, "ABC", "trade")
        self.index.add(a, "ABC", "*")
        self.index.add(b, "ABC", "*")
        got = self.index.match("ABC", "trade")
        self.assertEqual(len(got), 2)
        self.assertEqual(sorted(cast(Conn, c).name for c in got), ["a", "b"])
        self.index.add(a, "*", "trade")
        self.index.add(a, "*", "*")
        got = self.index.match("ABC", "trade")
        self.assertEqual(sorted(cast(Conn, c).name for c in got), ["a", "b"])

    def test_singleBucketIsNotCopied(self) -> None:
        """
        With one matching bucket, match() hands out a view of it instead of
        building a set: the hot path allocates nothing per subscriber.
        """
        a = Conn("a")
        self.index.add(a, "ABC", "trade")
        got = self.index.match("ABC", "trade")
        self.assertNotIsInstance(got, set)
        self.assertEqual(list(got), [a])
        self.assertEqual(type(got), type({}.keys()))

    def test_sameBucketSameObject(self) -> None:
        """
        Matches served by the same single bucket return the same object (the
        fan-out groups consecutive events by it); one served by another bucket
        or by several does not.
        """
        a, b = Conn("a"), Conn("b")
        self.index.add(a, "*", "*")
        first = self.index.match("ABC", "trade")
        self.assertIs(self.index.match("XYZ", "price"), first)
        self.index.add(b, "ABC", "trade")
        self.assertIsNot(self.index.match("ABC", "trade"), first)
        self.assertIs(self.index.match("XYZ", "price"), first)
        self.assertEqual(set(self.index.match("ABC", "trade")), {a, b})

    def test_mutationDuringIterationIsLoud(self) -> None:
        """
        The live view match() returns refuses to be iterated across a
        removal (RuntimeError) rather than silently skipping subscribers.
        """
        a, b = Conn("a"), Conn("b")
        self.index.add(a, "ABC", "trade")
        self.index.add(b, "ABC", "trade")
        with self.assertRaises(RuntimeError):
            for conn in self.index.match("ABC", "trade"):
                self.index.remove_all(conn)

    def test_wildcardIsNotAnEventSegment(self) -> None:
        """An exact subscription is not matched by a wildcard pattern's events."""
        a = Conn("a")
        self.index.add(a, "ABC", "trade")
        self.assertEqual(len(self.index.match("ABC", "price")), 0)
        self.assertEqual(len(self.index.match("ABCD", "trade")), 0)

    def test_tenThousandSubscribers(self) -> None:
        """
        With 10,000 subscribers spread over 100 tokens plus wildcard holders,
        every event matches exactly its token's subscribers and the wildcards,
        each once.
        """
        conns = [Conn(str(i)) for i in range(10000)]
        by_token: dict[str, set] = {}
        for i, conn in enumerate(conns):
            token = f"T{i % 100}"
            self.index.add(conn, token, "trade")
            by_token.setdefault(token, set()).add(conn)
        watchers = conns[:50]
        for conn in watchers:
            self.index.add(conn, "*", "trade")
        price_fans = conns[50:60]
        for conn in price_fans:
            self.index.add(conn, "*", "price")
        self.assertEqual(self.index.total, 10060)
        self.assertEqual(len(self.index), 102)
        for n in (0, 7, 99):
            token = f"T{n}"
            got = self.index.match(token, "trade")
            self.assertEqual(len(got), len(set(got)))
            self.assertEqual(set(got), by_token[token] | set(watchers))
            self.assertEqual(set(self.index.match(token, "price")), set(price_fans))
        self.assertEqual(set(self.index.match("T100", "trade")), set(watchers))
        for conn in conns:
            self.index.remove_all(conn)
        self.assertEqual((len(self.index), self.index.total), (0, 0))

    def test_anyHashableSubscriber(self) -> None:
        """Subscribers need only be hashable: strings and ints work too."""
        self.index.add("s", "ABC", "trade")
        self.index.add(7, "ABC", "*")
        self.assertEqual(set(self.index.match("ABC", "trade")), {"s", 7})


class Limits:
    """What the index reads of LimitsSettings."""

    def __init__(self, count: int, size: int, share: float = 1.0):
        self.max_shard_subscriptions = count
        self.max_shard_subscription_bytes = size
        self.ip_subscription_share = share


class BudgetTests(SynchronousTestCase):
    """The shard's subscription budget, which the index owns (issue 16)."""

    def test_countRefusesWholeBatch(self) -> None:
        """
        A batch that would take the index past max_shard_subscriptions is
        refused whole with BudgetExceeded (code server_subscription_limit):
        nothing of it is added; patterns already held cost nothing;
        removing frees room; a reload takes a new budget.
        """
        index = SubscriptionIndex(Limits(5, 1 << 30))
        a, b = Conn("a"), Conn("b")
        self.assertEqual(index.add_all(a, [("T1", "trade"), ("T2", "trade"), ("T3", "trade")]), 3)
        e = self.assertRaises(BudgetExceeded, index.add_all, b,
                              [("T1", "trade"), ("T4", "trade"), ("T5", "trade")])
        self.assertEqual(e.code, "server_subscription_limit")
        self.assertEqual((index.total, index.count(b), len(index)), (3, 0, 3))
        self.assertEqual(set(index.match("T1", "trade")), {a})
        self.assertEqual(index.add_all(a, [("T1", "trade"), ("T4", "trade"), ("T4", "trade")]), 1)
        self.assertTrue(index.add(b, "T4", "trade"))
        self.assertRaises(BudgetExceeded, index.add, b, "T5", "trade")
        index.remove_all(a)
        self.assertEqual(index.add_all(b, [("T5", "trade"), ("T6", "trade")]), 2)
        index.reconfigure(Limits(2, 1 << 30))
        self.assertEqual(index.total, 3)        # held subscriptions stay
        self.assertRaises(BudgetExceeded, index.add, a, "T1", "trade")

    def test_bytesRefusesAndFollowsRemovals(self) -> None:
        """
        max_shard_subscription_bytes counts each subscription and each
        distinct pattern; a batch past it is refused whole; removing
        everything brings the count back to zero.
        """
        one = SubscriptionIndex.cost("T1", "trade") + PATTERN_BYTES
        index = SubscriptionIndex(Limits(1000, 2 * one))
        a, b = Conn("a"), Conn("b")
        index.add_all(a, [("T1", "trade"), ("T2", "trade")])
        self.assertEqual(index.bytes, 2 * one)
        self.assertRaises(BudgetExceeded, index.add, b, "T1", "trade")
        self.assertEqual((index.total, index.bytes), (2, 2 * one))
        index.remove(a, "T2", "trade")
        self.assertEqual(index.bytes, one)
        self.assertTrue(index.add(b, "T1", "trade"))     # no new pattern: cheaper
        self.assertEqual(index.bytes, one + SubscriptionIndex.cost("T1", "trade"))
        self.assertRaises(BudgetExceeded, index.add, b, "T9", "trade")
        index.remove_all(a)
        index.remove_all(b)
        self.assertEqual((index.total, index.bytes), (0, 0))

    def test_countedBytesFollowMeasuredMemory(self) -> None:
        """
        What the budget counts per subscription, to a pattern nobody else
        holds and to a shared one, stays within 25% of what tracemalloc
        measures the index to allocate (subscribers with 1 to 100
        patterns, names of 17 to 80 characters), so the byte budget and
        docs/operations.md's figures hold.
        """
        for per, name in ((1, 12), (100, 12), (100, 75)):
            for distinct in (True, False):
                index = SubscriptionIndex()
                people = [Conn(str(i)) for i in range(100)]
                gc.collect()
                tracemalloc.start()
                try:
                    base = tracemalloc.get_traced_memory()[0]
                    n = 0
                    for person in people:
                        for j in range(per):
                            # Fresh strings, as parsing a subscribe makes them.
                            token = f"T{n if distinct else j:0{name - 1}d}"
                            index.add(person, token, "".join(["tra", "de"]))
                            n += 1
                    gc.collect()
                    used = tracemalloc.get_traced_memory()[0] - base
                finally:
                    tracemalloc.stop()
                ratio = index.bytes / used
                self.assertTrue(0.75 < ratio < 1.25, (per, name, distinct, used / n, ratio))


class AddressShareTests(SynchronousTestCase):
    """One client address holds at most its share of the shard's budget (issue 23, M2)."""

    def test_four_addresses_cannot_fill_the_budget(self) -> None:
        """
        With a budget of 100 subscriptions and a share of 0.2, each of four
        addresses gets 20 (over several subscribers) and is then refused
        with server_subscription_limit, whole; a fifth address still
        subscribes; an address that drops subscriptions (remove, or a
        subscriber gone) gets room back; the shard's budget still binds.
        """
        index = SubscriptionIndex(Limits(100, 1 << 30, 0.2))
        first = []
        for n in range(4):
            ip = f"10.0.0.{n}"
            first.append(Conn(f"{ip}a"))
            self.assertEqual(index.add_all(first[-1], [(f"A{n}{i}", "t") for i in range(10)],
                                           ip), 10)
            self.assertEqual(index.add_all(Conn(f"{ip}b"), [(f"B{n}{i}", "t") for i in range(10)],
                                           ip), 10)
            e = self.assertRaises(BudgetExceeded, index.add_all, Conn(f"{ip}c"),
                                  [("C", "t")], ip)
            self.assertEqual(e.code, "server_subscription_limit")
        self.assertEqual(index.total, 80)
        fifth = Conn("fifth")
        self.assertEqual(index.add_all(fifth, [(f"F{i}", "t") for i in range(20)], "10.0.0.9"),
                         20)
        self.assertRaises(BudgetExceeded, index.add, fifth, "F99", "t")
        # A subscriber keeps the address of its first subscriptions.
        self.assertRaises(BudgetExceeded, index.add_all, fifth, [("F99", "t")], "10.0.0.8")
        index.remove(fifth, "F0", "t")
        self.assertTrue(index.add(fifth, "F99", "t"))
        index.remove_all(first[0])
        self.assertEqual(index.add_all(Conn("x"), [(f"X{i}", "t") for i in range(10)],
                                       "10.0.0.0"), 10)
        self.assertEqual(index.budget.by_address["10.0.0.0"][0], 20)
        self.assertEqual(index.total, 100)
        self.assertRaises(BudgetExceeded, index.add, Conn("y"), "Y", "t")

    def test_bytes_share_and_release(self) -> None:
        """
        An address is held to its share of max_shard_subscription_bytes
        too; when all its subscriptions are gone it holds nothing (no entry
        is left behind).
        """
        one = SubscriptionIndex.cost("T1", "trade") + PATTERN_BYTES
        index = SubscriptionIndex(Limits(1000, 10 * one, 0.2))
        a = Conn("a")
        index.add_all(a, [("T1", "trade"), ("T2", "trade")], "10.0.0.1")
        self.assertRaises(BudgetExceeded, index.add, a, "T3", "trade")
        self.assertTrue(index.add_all(Conn("b"), [("T3", "trade")], "10.0.0.2"))
        index.remove_all(a)
        self.assertNotIn("10.0.0.1", index.budget.by_address)
        self.assertEqual(index.budget.by_address["10.0.0.2"][1], one)

