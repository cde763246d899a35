"""
odinws-simulate: a feed of realistic token events for demos and trials.

Each token has a price that follows a random walk; the feed mixes trades
(C{price}, C{size}, C{side}, C{tradeId}), price ticks (C{price}, C{bid},
C{ask}) and liquidity changes (C{liquidity}, C{delta}); every event carries
C{seq}, counting up from 1 per token and event type (one channel), so a
client can tell gaps and duplicates apart (C{odinws-loadtest} does).
Popular tokens trade more (Zipf-like weights) and a "hot" token now and
then draws a run of trades. The pace is bursty: per second a Poisson number
of events with quiet stretches and bursts, never more than C{--rate}, spread
unevenly over ten 100 ms slots.

The generation (L{events}, L{second_budgets}) is pure and seeded, so it is
testable without Kafka; L{main} paces it into a confluent-kafka producer.
Records: key = token id (UTF-8), value = JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

EVENT_TYPES = ("trade", "price", "liquidity")
DEFAULT_TOPICS: dict[str, str] = {"trade": "odin.trades", "price": "odin.prices",
                                  "liquidity": "odin.liquidity"}
#: Share of each event type in the feed (renormalised over the types produced).
MIX: dict[str, float] = {"trade": 0.55, "price": 0.35, "liquidity": 0.10}
#: Slots per second: the unit of pacing within a second.
SLOTS = 10
#: Mean rate outside bursts, as a fraction of the ceiling.
QUIET_SHARE = 0.6
#: Chance per second that a burst starts, and its length range in seconds.
BURST_CHANCE = 0.08
BURST_SECONDS = (2, 5)


@dataclass
class _Token:
    id: str
    price: float
    volatility: float
    spread: float
    liquidity: float
    anchor: float = 0.0
    trades: int = 0
    drift: float = 0.0


def _sig(x: float, digits: int = 6) -> float:
    """Round to significant digits, as a price feed would quote it."""
    return float(f"{x:.{digits}g}")


def token_ids(count: int) -> list[str]:
    """C{TOK001}, C{TOK002}, ... (at least three digits)."""
    width = max(3, len(str(count)))
    return [f"TOK{i:0{width}d}" for i in range(1, count + 1)]


class Market:
    """
    The state of C{tokens} tokens and the seeded random source that moves it.

    @param clock: seconds since the epoch, for the C{ts} field of values.
    """

    def __init__(self, tokens: int = 100, seed: int | None = None,
                 types: tuple[str, ...] = EVENT_TYPES,
                 clock: Callable[[], float] = time.time):
        if tokens < 1:
            raise ValueError("tokens must be at least 1")
        unknown = set(types) - set(EVENT_TYPES)
        if unknown or not types:
            raise ValueError(f"event types must be among {EVENT_TYPES}, got {types}")
        self.rng = random.Random(seed)
        self.clock = clock
        self.types = tuple(types)
        self.type_weights = [MIX[t] for t in self.types]
        rng = self.rng
        self.tokens = [
            _Token(id=tid,
                   price=math.exp(rng.uniform(math.log(0.01), math.log(500.0))),
                   volatility=rng.uniform(0.0003, 0.003),
                   spread=rng.uniform(0.0005, 0.004),
                   liquidity=rng.uniform(5e4, 5e6))
            for tid in token_ids(tokens)]
        for tok in self.tokens:
            tok.anchor = tok.price
        # Popularity: a few tokens get most of the flow.
        self.weights = [1.0 / (rank ** 0.8) for rank in range(1, tokens + 1)]
        rng.shuffle(self.weights)
        self.hot = rng.randrange(tokens)
        #: Last C{seq} per (token id, event type).
        self.seqs: dict[tuple[str, str], int] = {}

    def _pick(self, kind: str) -> _Token:
        if self.rng.random() < 1 / 400:
            self.hot = self.rng.randrange(len(self.tokens))
        if kind == "trade" and self.rng.random() < 0.3:
            return self.tokens[self.hot]
        return self.rng.choices(self.tokens, self.weights)[0]

    def _walk(self, tok: _Token) -> None:
        rng = self.rng
        # A slowly changing drift gives trends, not just noise; a weak pull
        # back to the starting price keeps a long run within a sane range.
        tok.drift = 0.97 * tok.drift + rng.gauss(0.0, tok.volatility * 0.1)
        x = math.log(tok.price / tok.anchor)
        x += tok.drift + rng.gauss(0.0, tok.volatility) - 0.002 * x
        tok.price = tok.anchor * math.exp(x)

    def next_event(self) -> tuple[str, str, dict]:
        """One event: (event type, token id, value fields)."""
        rng = self.rng
        kind = rng.choices(self.types, self.type_weights)[0]
        tok = self._pick(kind)
        ts = int(self.clock() * 1000)
        if kind == "trade":
            self._walk(tok)
            # Momentum: buyers follow a rising price.
            side = "buy" if rng.random() < 0.5 + max(-0.3, min(0.3, tok.drift * 50)) else "sell"
            half = tok.price * tok.spread / 2
            price = tok.price + (half if side == "buy" else -half) * rng.random()
            tok.trades += 1
            value = {"token": tok.id, "price": _sig(price),
                     "size": _sig(rng.lognormvariate(3.0, 1.2), 4), "side": side,
                     "tradeId": f"{tok.id}-{tok.trades}", "ts": ts}
        elif kind == "price":
            self._walk(tok)
            half = tok.price * tok.spread / 2
            value = {"token": tok.id, "price": _sig(tok.price), "bid": _sig(tok.price - half),
                     "ask": _sig(tok.price + half), "ts": ts}
        else:
            delta = rng.gauss(0.0, tok.liquidity * 0.02)
            delta = max(delta, 1000.0 - tok.liquidity)
            tok.liquidity += delta
            value = {"token": tok.id, "liquidity": round(tok.liquidity, 2),
                     "delta": round(delta, 2), "ts": ts}
        seq = self.seqs[tok.id, kind] = self.seqs.get((tok.id, kind), 0) + 1
        value["seq"] = seq
        return kind, tok.id, value


def events(tokens: int = 100, seed: int | None = None,
           topics: Mapping[str, str] = DEFAULT_TOPICS,
           clock: Callable[[], float] = time.time) -> Iterator[tuple[str, bytes, bytes]]:
    """
    The endless feed as Kafka records: (topic, key, value), key the token id
    and value the JSON event, for the event types named in C{topics}
    (event type -> topic).
    """
    market = Market(tokens, seed, tuple(t for t in EVENT_TYPES if t in topics), clock)
    while True:
        kind, token, value = market.next_event()
        yield (topics[kind], token.encode("utf-8"),
               json.dumps(value, separators=(",", ":")).encode("utf-8"))


def _poisson(rng: random.Random, lam: float) -> int:
    if lam <= 0:
        return 0
    if lam > 50:
        # Normal approximation: exact sampling costs O(lambda) per draw.
        return max(0, round(rng.gauss(lam, math.sqrt(lam))))
    limit, k, p = math.exp(-lam), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


def second_budgets(rate: int, seed: int | None = None) -> Iterator[list[int]]:
    """
    Events per 100 ms slot, one list of L{SLOTS} counts per second. Each
    second's total is at most C{rate}: about C{QUIET_SHARE} of it on
    average, bursts of a few seconds at the ceiling.
    """
    if rate < 1:
        raise ValueError("rate must be at least 1")
    rng = random.Random(None if seed is None else seed + 1)
    burst_left = 0
    while True:
        if burst_left == 0 and rng.random() < BURST_CHANCE:
            burst_left = rng.randint(*BURST_SECONDS)
        if burst_left:
            burst_left -= 1
            lam = rate * 1.2
        else:
            lam = rate * QUIET_SHARE * rng.uniform(0.7, 1.3)
        total = min(rate, _poisson(rng, lam))
        # Uneven spread within the second: some slots get clumps.
        weights = [rng.expovariate(1.0) for _ in range(SLOTS)]
        slots = [0] * SLOTS
        for i in rng.choices(range(SLOTS), weights, k=total):
            slots[i] += 1
        yield slots


def parse_topics(text: str) -> dict[str, str]:
    """C{trade=odin.trades,price=odin.prices} -> {event type: topic}."""
    result: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        kind, sep, topic = part.partition("=")
        if not sep or not topic or kind not in EVENT_TYPES:
            raise ValueError(f"expected TYPE=TOPIC with TYPE among {', '.join(EVENT_TYPES)}, "
                             f"got {part!r}")
        result[kind] = topic
    if not result:
        raise ValueError("no topics given")
    return result


class Feed:
    """
    Paces L{events} into a producer along L{second_budgets} until
    C{duration} seconds have passed (0: forever) or L{stop} is called.
    """

    def __init__(self, producer, stream: Iterator[tuple[str, bytes, bytes]],
                 budgets: Iterator[list[int]]):
        self.producer = producer
        self.stream = stream
        self.budgets = budgets
        #: Records queued per topic.
        self.sent: Counter = Counter()
        self.failed = 0
        self.first_error: str | None = None
        self._stopping = threading.Event()

    def stop(self) -> None:
        self._stopping.set()

    def _delivered(self, err, msg) -> None:
        if err is not None:
            self.failed += 1
            if self.first_error is None:
                self.first_error = f"{msg.topic()}: {err}"
                sys.stderr.write(f"odinws-simulate: delivery failed: {self.first_error}\n")

    def _produce(self, topic: str, key: bytes, value: bytes) -> None:
        while True:
            try:
                self.producer.produce(topic, value=value, key=key, on_delivery=self._delivered)
                return
            except BufferError:
                # The local queue is full (broker slow or away): let it drain.
                self.producer.poll(0.1)
                if self._stopping.is_set():
                    return

    def run(self, duration: float = 0.0) -> float:
        """Produce until done; return the seconds it ran."""
        start = time.monotonic()
        slot_start = start
        for slots in self.budgets:
            for count in slots:
                for _ in range(count):
                    topic, key, value = next(self.stream)
                    self._produce(topic, key, value)
                    self.sent[topic] += 1
                self.producer.poll(0)
                slot_start += 1.0 / SLOTS
                now = time.monotonic()
                if duration and now - start >= duration:
                    return now - start
                if now - slot_start > 1.0:
                    # Fell behind (stalled producer, suspended laptop): do
                    # not catch up in a rush above the rate.
                    slot_start = now
                if self._stopping.wait(max(0.0, slot_start - now)):
                    return time.monotonic() - start
        return time.monotonic() - start

    def summary(self, elapsed: float) -> str:
        total = sum(self.sent.values())
        kinds = ", ".join(f"{t} {n}" for t, n in sorted(self.sent.items()))
        rate = total / elapsed if elapsed > 0 else 0.0
        return (f"odinws-simulate: {total} events in {elapsed:.1f}s ({rate:.1f}/s)"
                f"{': ' + kinds if kinds else ''}; {self.failed} failed")


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="odinws-simulate",
        description="Produce realistic token events (trades, price ticks, liquidity "
                    "changes) to Kafka for odinws. Key = token id, value = JSON.")
    p.add_argument("--brokers", default="127.0.0.1:9092", help="bootstrap brokers")
    p.add_argument("--rate", type=int, default=200,
                   help="ceiling in events per second, all types together; the feed "
                        f"averages about {int(QUIET_SHARE * 100)}%% of it and bursts up to it")
    p.add_argument("--tokens", type=int, default=100, help="number of tokens (TOK001...)")
    p.add_argument("--topics", default=",".join(f"{k}={v}" for k, v in DEFAULT_TOPICS.items()),
                   help="event type=topic pairs; only these types are produced")
    p.add_argument("--duration", type=float, default=0.0, help="seconds to run (0: until Ctrl-C)")
    p.add_argument("--seed", type=int, default=None, help="random seed (same seed, same feed)")
    p.add_argument("--create-topics", action="store_true",
                   help="create the topics first (existing ones are left as they are)")
    p.add_argument("--partitions", type=int, default=3, help="partitions of created topics")
    p.add_argument("--registry", default="",
                   help="Schema Registry URL: write the values as Avro in Confluent's wire "
                        "format, schemas registered as <topic>-value (default: JSON)")
    args = p.parse_args(argv)
    try:
        args.topics = parse_topics(args.topics)
    except ValueError as e:
        p.error(f"--topics: {e}")
    for name in ("rate", "tokens", "partitions"):
        if getattr(args, name) < 1:
            p.error(f"--{name}: must be at least 1")
    if args.duration < 0:
        p.error("--duration: must not be negative")
    return args


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient

    from odinws_tools.embedded_broker import create_topics

    base = {"bootstrap.servers": args.brokers}
    if args.create_topics:
        try:
            create_topics(AdminClient(base), args.topics.values(), args.partitions)
        except Exception as e:  # noqa: BLE001 - reported as one line, then exit
            sys.stderr.write(f"odinws-simulate: cannot create topics: {e}\n")
            return 1
    producer = Producer({**base, "linger.ms": 5, "queue.buffering.max.messages": 200000})
    stream = events(args.tokens, args.seed, args.topics)
    if args.registry:
        from confluent_kafka.schema_registry import SchemaRegistryClient

        from odinws_tools.avrofeed import as_avro
        stream = as_avro(stream, args.topics, SchemaRegistryClient({"url": args.registry}))
    feed = Feed(producer, stream, second_budgets(args.rate, args.seed))
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: feed.stop())
    pairs = ", ".join(f"{k}={v}" for k, v in args.topics.items())
    print(f"odinws-simulate: {args.tokens} tokens, up to {args.rate} events/s to "
          f"{args.brokers} ({pairs}){', Avro via ' + args.registry if args.registry else ''}; "
          "Ctrl-C stops", flush=True)
    elapsed = feed.run(args.duration)
    left = producer.flush(5.0)
    feed.failed += left
    print(feed.summary(elapsed) + (f" ({left} undelivered at exit)" if left else ""), flush=True)
    return 1 if feed.failed else 0


if __name__ == "__main__":
    sys.exit(main())
