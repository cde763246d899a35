"""
Tests for L{odinws_tools.simulate}: the seeded event feed and its pacing plan
without Kafka, and the C{odinws-simulate} program against the test broker.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from typing import Any

from twisted.trial import unittest

from odinws_tools import simulate
from tests.helpers.broker import FAST_KAFKA, shared_broker
from tests.helpers.node import ROOT  # the repository root


def _take(n, **kw):
    kw.setdefault("clock", lambda: 1700000000.0)
    return list(itertools.islice(simulate.events(**kw), n))


class EventsTests(unittest.TestCase):
    def test_same_seed_same_feed(self):
        """Two feeds with the same seed (and clock) produce identical records."""
        self.assertEqual(_take(500, tokens=20, seed=7), _take(500, tokens=20, seed=7))

    def test_different_seed_different_feed(self):
        """Another seed gives another feed."""
        self.assertNotEqual(_take(100, tokens=20, seed=7), _take(100, tokens=20, seed=8))

    def test_record_shapes(self):
        """
        Every record's key is its token id, its value is a JSON object whose
        fields match its topic's event type, with sane values.
        """
        topics = simulate.DEFAULT_TOPICS
        by_topic = {v: k for k, v in topics.items()}
        ids = set(simulate.token_ids(30))
        last_trade: dict[str, int] = {}
        last_seq: dict[tuple[str, str], int] = {}
        for topic, key, value in _take(3000, tokens=30, seed=1):
            data = json.loads(value)
            kind = by_topic[topic]
            token = key.decode("utf-8")
            self.assertIn(token, ids)
            self.assertEqual(data["token"], token)
            self.assertEqual(data["ts"], 1700000000000)
            # seq counts up by one per channel (token, type): gaps are visible.
            self.assertEqual(data["seq"], last_seq.get((token, kind), 0) + 1)
            last_seq[token, kind] = data["seq"]
            if kind == "trade":
                self.assertEqual(set(data), {"token", "price", "size", "side", "tradeId", "ts", "seq"})
                self.assertIn(data["side"], ("buy", "sell"))
                self.assertGreater(data["price"], 0)
                self.assertGreater(data["size"], 0)
                owner, _, seq = data["tradeId"].rpartition("-")
                self.assertEqual(owner, token)
                # Trade ids count up per token.
                self.assertEqual(int(seq), last_trade.get(token, 0) + 1)
                last_trade[token] = int(seq)
            elif kind == "price":
                self.assertEqual(set(data), {"token", "price", "bid", "ask", "ts", "seq"})
                self.assertLess(data["bid"], data["price"])
                self.assertLess(data["price"], data["ask"])
            else:
                self.assertEqual(set(data), {"token", "liquidity", "delta", "ts", "seq"})
                self.assertGreater(data["liquidity"], 0)
        self.assertTrue(last_trade)

    def test_type_shares(self):
        """Over many events each type's share is close to its configured mix."""
        counts = Counter(t for t, _, _ in _take(20000, tokens=50, seed=3))
        for kind, topic in simulate.DEFAULT_TOPICS.items():
            share = counts[topic] / 20000
            self.assertTrue(abs(share - simulate.MIX[kind]) < 0.03, (kind, share))

    def test_topic_subset(self):
        """Only the event types given topics are produced, on those topics."""
        records = _take(300, tokens=5, seed=2, topics={"trade": "x.trades"})
        self.assertEqual({t for t, _, _ in records}, {"x.trades"})
        self.assertTrue(all("side" in json.loads(v) for _, _, v in records))

    def test_token_ids(self):
        """Token ids are TOK plus a zero-padded number, at least three digits."""
        self.assertEqual(simulate.token_ids(3), ["TOK001", "TOK002", "TOK003"])
        self.assertEqual(simulate.token_ids(1200)[-1], "TOK1200")

    def test_invalid_market(self):
        """No tokens, or an unknown event type, is refused."""
        self.assertRaises(ValueError, simulate.Market, 0)
        self.assertRaises(ValueError, simulate.Market, 5, types=("trade", "bogus"))


class BudgetTests(unittest.TestCase):
    def test_never_above_rate(self):
        """No second's plan exceeds the rate, for small and large rates."""
        for rate in (1, 7, 200, 5000):
            for slots in itertools.islice(simulate.second_budgets(rate, seed=rate), 300):
                self.assertEqual(len(slots), simulate.SLOTS)
                self.assertLessEqual(sum(slots), rate)
                self.assertTrue(all(n >= 0 for n in slots))

    def test_bursty(self):
        """
        The plan has quiet seconds and bursts at the ceiling, and averages
        well below the ceiling but well above nothing.
        """
        totals = [sum(s) for s in itertools.islice(simulate.second_budgets(200, seed=4), 600)]
        self.assertIn(200, totals)
        self.assertLess(min(totals), 150)
        mean = sum(totals) / len(totals)
        self.assertGreater(mean, 0.4 * 200)
        self.assertLess(mean, 0.9 * 200)

    def test_seeded(self):
        """The plan is reproducible with a seed."""
        a = list(itertools.islice(simulate.second_budgets(50, seed=9), 50))
        b = list(itertools.islice(simulate.second_budgets(50, seed=9), 50))
        self.assertEqual(a, b)

    def test_invalid_rate(self):
        """A rate below one is refused."""
        self.assertRaises(ValueError, next, simulate.second_budgets(0))


class FakeProducer:
    """Records produce() calls; raises BufferError C{full} times first."""

    def __init__(self, full: int = 0):
        self.records: list[Any] = []
        self.full = full
        self.polls = 0

    def produce(self, topic, value=None, key=None, on_delivery=None):
        if self.full:
            self.full -= 1
            raise BufferError("queue full")
        self.records.append((topic, key, value))

    def poll(self, timeout=0):
        self.polls += 1
        return 0


class FeedTests(unittest.TestCase):
    def test_stop_ends_after_the_current_slot(self):
        """A stopped feed produces its current slot's events and returns."""
        producer = FakeProducer()
        feed = simulate.Feed(producer, iter([("t", b"A", b"{}")] * 3),
                             iter([[3] + [5] * (simulate.SLOTS - 1)]))
        feed.stop()
        feed.run()
        self.assertEqual(len(producer.records), 3)
        self.assertEqual(feed.sent, Counter({"t": 3}))

    def test_buffer_full_is_retried(self):
        """A full local queue is drained with poll() and the record sent once."""
        producer = FakeProducer(full=2)
        # One plan of one slot: run() returns when the plan runs out.
        feed = simulate.Feed(producer, iter([("t", b"A", b"{}")]), iter([[1]]))
        feed.run()
        self.assertEqual(producer.records, [("t", b"A", b"{}")])
        self.assertGreaterEqual(producer.polls, 2)

    def test_summary(self):
        """The summary line counts events per topic, the rate and failures."""
        feed = simulate.Feed(FakeProducer(), iter(()), iter(()))
        feed.sent.update({"odin.trades": 30, "odin.prices": 10})
        feed.failed = 1
        self.assertEqual(feed.summary(2.0), "odinws-simulate: 40 events in 2.0s (20.0/s): "
                                            "odin.prices 10, odin.trades 30; 1 failed")


class OptionsTests(unittest.TestCase):
    def test_parse_topics(self):
        """--topics maps event types to topics; unknown types and junk are refused."""
        self.assertEqual(simulate.parse_topics("trade=a, price=b"), {"trade": "a", "price": "b"})
        for bad in ("", "trade", "trade=", "quote=x"):
            self.assertRaises(ValueError, simulate.parse_topics, bad)

    def test_bad_arguments_exit(self):
        """Out-of-range options stop the program with a usage error."""
        for argv in (["--rate", "0"], ["--tokens", "0"], ["--topics", "x=y"],
                     ["--duration", "-1"]):
            self.assertRaises(SystemExit, simulate._arguments, argv)


class ProgramTests(unittest.TestCase):
    def test_produces_until_sigterm(self):
        """
        C{python -m odinws_tools.simulate} creates its topics, produces keyed JSON
        records that a consumer reads back, and on SIGTERM exits 0 with a
        summary line.
        """
        from confluent_kafka import Consumer

        broker = shared_broker()
        suffix = f"{os.getpid()}.{time.monotonic_ns()}"
        topics = {"trade": f"sim.trades.{suffix}", "price": f"sim.prices.{suffix}"}
        env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        proc = subprocess.Popen(
            [sys.executable, "-m", "odinws_tools.simulate", "--brokers", broker.bootstrap,
             "--rate", "50", "--tokens", "5", "--seed", "1", "--create-topics",
             "--partitions", "2", "--topics", ",".join(f"{k}={v}" for k, v in topics.items())],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env)
        self.addCleanup(lambda: proc.poll() is None and proc.kill())
        self.assertIn(b"up to 50 events/s", proc.stdout.readline())

        consumer = Consumer({"bootstrap.servers": broker.bootstrap,
                             "group.id": f"sim-test-{suffix}", "auto.offset.reset": "earliest",
                             "session.timeout.ms": FAST_KAFKA["kafka.session_timeout_ms"],
                             "heartbeat.interval.ms": 500})
        self.addCleanup(consumer.close)
        consumer.subscribe(list(topics.values()))
        seen: Counter = Counter()
        deadline = time.monotonic() + 30
        while min(seen[t] for t in topics.values()) < 3:
            self.assertLess(time.monotonic(), deadline, f"records seen: {dict(seen)}")
            msg = consumer.poll(0.5)
            if msg is None or msg.error():
                continue
            data = json.loads(msg.value())
            self.assertEqual(data["token"], msg.key().decode())
            seen[msg.topic()] += 1

        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
        self.assertEqual(proc.returncode, 0, err.decode())
        self.assertRegex(out.decode(), r"odinws-simulate: \d+ events in [\d.]+s .*; 0 failed")
