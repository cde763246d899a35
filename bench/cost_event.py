"""
The shard's whole per-event path, in this process, counted in instructions:
Kafka records (as confluent-kafka hands them to the consumer loop) mapped to
events (L{odin_ws.shard.kafka.records.RecordMapper}, the loop's per-record
bookkeeping and broker-latency metric), then L{Delivery.on_kafka_batch}
as the shard wires it (de-duplication, history, matching, variants, SSE
streams, framing, the fan-out, the C send loop or the Python one, latency
metrics), to CONNECTIONS connections on Unix socketpairs adopted by the
epoll reactor, each with the shard's Outbox. What it leaves out: the
consumer thread's hand-over to the reactor (C{callFromThread}), librdkafka,
and the kernel (callgrind counts user space only).

Workloads (bench/run.py's cells):

  - all-turn: every connection subscribed to everything, one event per batch;
  - all-burst: the same, batches of 10 events;
  - tokens-turn / tokens-burst: each connection follows 3 of 100 tokens,
    events rotate over the 100 tokens.

    python bench/cost_event.py --workload all-turn --batches 50
    python bench/cost_event.py --callgrind [--connections 1000]   # the table
    python bench/cost_event.py --profile all-turn   # callgrind.out for callgrind_annotate

L{costs} runs each workload twice under callgrind (short, long) and takes
the difference, so start-up cancels out: instructions per event and per
delivered frame of the steady state.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
import time

HERE = os.path.abspath(__file__)
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))

if __name__ == "__main__":
    from twisted.internet import epollreactor
    epollreactor.install()

import fanout_loop  # noqa: E402
from twisted.internet import reactor  # noqa: E402

from odin_ws.common import config as configmod  # noqa: E402
from odin_ws.common import metrics  # noqa: E402
from odin_ws.common.events import Event, Partition  # noqa: E402
from odin_ws.common.highwater import HighWater  # noqa: E402
from odin_ws.common.prometheus_internals import Observer  # noqa: E402
from odin_ws.common.settings import Settings  # noqa: E402
from odin_ws.shard.delivery.deflate import Deflate  # noqa: E402
from odin_ws.shard.delivery.fanout import Fanout  # noqa: E402
from odin_ws.shard.delivery.nativesend import select  # noqa: E402
from odin_ws.shard.delivery.outbox import Outbox  # noqa: E402
from odin_ws.shard.delivery.pipeline import Delivery  # noqa: E402
from odin_ws.shard.delivery.ssefeed import Streams  # noqa: E402
from odin_ws.shard.delivery.subscriptions import SubscriptionIndex  # noqa: E402
from odin_ws.shard.delivery.variantfeed import VariantFeed  # noqa: E402
from odin_ws.shard.delivery.variants import VariantIndex  # noqa: E402
from odin_ws.shard.delivery.writestats import WriteStats  # noqa: E402
from odin_ws.shard.history.store import History  # noqa: E402
from odin_ws.shard.kafka.records import RecordMapper  # noqa: E402
from odin_ws.shard.kafka.valueformats import ValueDecoder  # noqa: E402
from odin_ws.shard.service import _history_bounds  # noqa: E402

TOPIC = "odin.trades"
_BROKER_LATENCY = Observer(metrics.BROKER_LATENCY)
WORKLOADS = {"all-turn": ("all", 1), "all-burst": ("all", 10),
             "tokens-turn": ("tokens", 1), "tokens-burst": ("tokens", 10)}
#: Batches of the short and the long run under callgrind, per workload.
CALLGRIND_BATCHES = {"all-turn": (10, 30), "all-burst": (5, 20),
                     "tokens-turn": (100, 300), "tokens-burst": (20, 60)}


class Record:
    """What the consumer loop reads of a confluent-kafka Message."""

    __slots__ = ("_key", "_value", "_offset", "_ts")

    def __init__(self, key: bytes, value: bytes, offset: int, ts: int):
        self._key, self._value, self._offset, self._ts = key, value, offset, ts

    def error(self) -> None:
        return None

    def topic(self) -> str:
        return TOPIC

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes:
        return self._key

    def value(self) -> bytes:
        return self._value

    def timestamp(self) -> tuple[int, int]:
        return (1, self._ts)

    def headers(self) -> None:
        return None


def handle(mapper: RecordMapper, messages: list[Record], positions: dict) -> list:
    """
    The per-record part of L{odin_ws.shard.kafka.consumerloop.ConsumerLoop.handle}
    (positions, offsets, counters, mapping, the broker-latency metric).
    """
    events = []
    offsets = {}
    consumed = time.time()
    for m in messages:
        if m.error() is not None:
            continue
        topic, partition, offset = m.topic(), m.partition(), m.offset()
        key = Partition(topic, partition)
        positions[key] = offset
        offsets[key] = offset + 1
        result = mapper.map(topic, m.key(), m.value(), m.timestamp()[1], partition, offset,
                            "3f9a2c1b", m.headers)
        if not isinstance(result, str):
            result.consumed = consumed
            events.append(result)
    _BROKER_LATENCY.observe_all([max(0.0, consumed - e.ts / 1000.0) for e in events])
    metrics.KAFKA_RECORDS.labels(TOPIC).inc(len(messages))
    return events


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--native", choices=("on", "off"), default="on")
    ap.add_argument("--workload", choices=tuple(WORKLOADS), default="all-turn")
    ap.add_argument("--connections", type=int, default=1000)
    ap.add_argument("--batches", type=int, default=20)
    ap.add_argument("--warm", type=int, default=3, help="batches before the measured ones")
    ap.add_argument("--no-drain", dest="drain", action="store_false",
                    help="never read the client ends (under callgrind: reading is not the shard's)")
    ap.add_argument("--full-history", action="store_true",
                    help="fill the partition's history to its count bound first, as in a "
                         "running shard: every event then evicts one")
    args = ap.parse_args()
    shape, size = WORKLOADS[args.workload]
    settings = Settings.from_config(configmod.load(None, environ={}))
    stats = WriteStats()
    fanout = Fanout(reactor, stats, 0.0, select(args.native).send_runs,
                    Deflate(stats, True, settings.outbound.compression_min_bytes))
    protocols, clients = fanout_loop.connect(args.connections)
    reactor.runUntilCurrent()
    reactor.doIteration(0)
    index = SubscriptionIndex(settings.limits)
    feed = VariantFeed(reactor, VariantIndex(index.budget), fanout)
    history = History(clock=time.time, **_history_bounds(settings))
    streams = Streams(reactor, settings, fanout, history, index)
    delivery = Delivery(settings, index, fanout, history, streams, HighWater("bench"),
                        lambda events: None, feed)
    rng = random.Random(7)
    for p in protocols:
        p.outbox = Outbox(p, fanout, lambda t: "drop", 1 << 22, 5.0, lambda: None)
        if shape == "all":
            index.add(p.outbox, "*", "trade")
        else:
            for t in rng.sample(range(100), 3):
                index.add(p.outbox, str(1000 + t), "trade")
    mapper = RecordMapper({TOPIC: "trade"}, _options(settings), ValueDecoder(None), 1 << 20)
    positions: dict = {}
    seq = _fill(history, settings.history.max_events_per_partition) if args.full_history else 0
    measured = frames = 0
    cpu = 0.0
    for n in range(args.warm + args.batches):
        batch = []
        for _ in range(size):
            tok = 1000 + seq % (16 if shape == "all" else 100)
            us = time.time_ns() // 1000
            value = (b'{"t_us":%d,"seq":%d,"token":"%d","price":0.00001234,"amount":1234.5678,'
                     b'"side":"buy","user":"bc1qxy2kgdygjrsqtzq2n0yrf2493p83kkfjhx0wlh"}'
                     % (us, seq, tok))
            batch.append(Record(b"%d" % tok, value, seq, us // 1000))
            seq += 1
        before = stats.delivered
        c0 = time.process_time()
        delivery.on_kafka_batch(handle(mapper, batch, positions))
        reactor.runUntilCurrent()   # the rest of the reactor's turn
        if n >= args.warm:
            cpu += time.process_time() - c0
            measured += size
            frames += stats.delivered - before
        if args.drain:
            fanout_loop.drain(clients)
    assert stats.fallbacks == stats.partial == 0, "the kernel refused: raise SO_SNDBUF"
    print(json.dumps({"native": args.native, "workload": args.workload,
                      "connections": args.connections, "events": measured, "frames": frames,
                      "sends": stats.writes, "cpu_us_per_frame": cpu / frames * 1e6,
                      "cpu_us_per_event": cpu / measured * 1e6}))


def _fill(history: History, count: int) -> int:
    """C{count} events of the bench's partition in C{history} (offsets 0 on); the next offset."""
    now_ms = int(time.time() * 1000)
    for seq in range(count):
        value = b'{"seq":%d,"price":0.00001234,"amount":1234.5678,"side":"buy"}' % seq
        history.add(Event.build(str(1000 + seq % 100), "trade", value, now_ms, TOPIC, 0, seq,
                                "3f9a2c1b"))
    return count


def _options(settings: Settings) -> dict:
    from odin_ws.common import topicoptions
    k = settings.kafka
    return topicoptions.for_topics({TOPIC: "trade"}, k.topic_options, k.token_field,
                                   k.event_type_field)


def run(*args: str, tree: str = os.path.dirname(os.path.dirname(HERE)),
        valgrind: str | None = None) -> tuple[dict, int | None]:
    """One run of this script (in C{tree}): its JSON line, and callgrind's instructions."""
    cmd = [sys.executable, os.path.join(tree, "bench", os.path.basename(HERE)), *args]
    if valgrind is not None:
        cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={valgrind}", *cmd]
    # One hash seed for every run: with random ones the same tree's counts
    # moved by ±10% between runs (set and dict layouts), with one by 0.02%.
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    done = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
    found = re.search(r"Collected : (\d+)", done.stderr)
    return json.loads(done.stdout.strip().splitlines()[-1]), int(found.group(1)) if found else None


def costs(connections: int = 1000, natives: tuple[str, ...] = ("on", "off"),
          workloads: tuple[str, ...] = tuple(WORKLOADS), full_history: bool = False,
          **kw) -> list[dict]:
    """Instructions per event and per frame of each workload and loop (callgrind)."""
    rows = []
    for workload in workloads:
        short, long = CALLGRIND_BATCHES[workload]
        for native in natives:
            args = ("--native", native, "--workload", workload, "--connections", str(connections),
                    *(("--full-history",) if full_history else ()))
            (a, ia), (b, ib) = (run(*args, "--batches", str(n), "--no-drain", valgrind="/dev/null",
                                    **kw)
                                for n in (short, long))
            ins = ib - ia  # type: ignore[operator]
            rows.append({"workload": workload, "native": native, "connections": connections,
                         "full_history": full_history,
                         "instructions_per_event": ins / (b["events"] - a["events"]),
                         "instructions_per_frame": ins / (b["frames"] - a["frames"]),
                         "frames_per_event": (b["frames"] - a["frames"]) / (b["events"] - a["events"])})
    return rows


def render(rows: list[dict]) -> str:
    lines = ["| workload | loop | conns | frames per event | instructions per event | "
             "instructions per frame |", "|---|---|---:|---:|---:|---:|"]
    for r in rows:
        workload = r["workload"] + (", history full" if r.get("full_history") else "")
        lines.append(f"| {workload} | {'C' if r['native'] == 'on' else 'Python'} | "
                     f"{r['connections']:,} | {r['frames_per_event']:,.1f} | "
                     f"{r['instructions_per_event']:,.0f} | {r['instructions_per_frame']:,.0f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    if "--callgrind" in sys.argv:
        ap = argparse.ArgumentParser()
        ap.add_argument("--callgrind", action="store_true")
        ap.add_argument("--connections", type=int, default=1000)
        ap.add_argument("--native", default="on,off")
        ap.add_argument("--workloads", default=",".join(WORKLOADS))
        ap.add_argument("--full-history", action="store_true")
        a = ap.parse_args()
        print(render(costs(a.connections, tuple(a.native.split(",")),
                           tuple(a.workloads.split(",")), a.full_history)))
    else:
        main()
