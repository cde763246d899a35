"""
The event source of odinws and Centrifugo in the benchmark: a confluent-kafka producer that
writes the benchmark's ~200-byte trade events to Kafka at a rate set on stdin.

    python bench/kafka_feed.py BOOTSTRAP [--centrifugo all|token]

stdin: "rate R B [N]" = R events/s produced in bursts of B back-to-back
records on tokens 1000 + seq % N (16 by default; R=0 stops); "q" quits.
Prints "ready" and, after "stats", one JSON line with what it produced. The
record value is the event's "data" object (odinws wraps it into the same
envelope the peers send); "t_us" is taken at produce time,
so measured latency includes the whole Kafka path.

--centrifugo: the same records, plus the header Centrifugo's Kafka consumer
needs in its publication data mode (the value is published as is): the
channel to publish into, "centrifugo-channels". "all": every event to one
channel, odin.all (everyone subscribes to it: Centrifugo has no wildcards);
"token": each event to its token's channel, odin.token.<token>.trade (the
random-tokens cells). The cell's channel only: publishing to a channel that
no connection of the cell subscribes to would cost Centrifugo one more
publish per event that no other server does.

--tiers (bench/bandwidth.py's filter cells): each event carries "tier"
((seq // 10) % 10: ten events in a row share one, so what a filter on it
passes comes in bursts of 10 like the rest), for a filter that passes 10%
of them. "one": every event on
token 1000; "split": tier 0 on token 1000, the others on 1001 (nobody
listens there), so a subscriber of token 1000 without a filter gets what
the filter passes in "one", at the same Kafka ingest.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import sys
import time

from confluent_kafka import Producer

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "peers"))
import events  # (the peers' pacing, tokens and stdin commands)
from events import Ticks, commands, rate_command

TOPIC = "odin.trades"
#: Centrifugo's publication data mode: the header naming the channels.
CHANNELS_HEADER = "centrifugo-channels"
ALL_CHANNEL = "odin.all"


def headers(mode: str | None, tok: int) -> list[tuple[str, bytes]] | None:
    """The record's headers for Centrifugo's consumer (see --centrifugo), None for odinws."""
    if mode is None:
        return None
    channel = ALL_CHANNEL if mode == "all" else f"odin.token.{tok}.trade"
    return [(CHANNELS_HEADER, channel.encode())]


def value(seq: int, tok: int, tiers: bool = False) -> bytes:
    us = time.time_ns() // 1000
    tier = f'"tier":{seq // 10 % 10},' if tiers else ""
    return (f'{{"t_us":{us},"seq":{seq},{tier}"token":"{tok}","price":0.00001234,'
            f'"amount":1234.5678,"side":"buy",'
            f'"user":"bc1qxy2kgdygjrsqtzq2n0yrf2493p83kkfjhx0wlh"}}').encode()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bootstrap")
    ap.add_argument("--centrifugo", choices=("all", "token"), default=None,
                    help="add Centrifugo's channels header (see above)")
    ap.add_argument("--tiers", choices=("one", "split"), default=None,
                    help="events with a tier, on one token or split (see above)")
    args = ap.parse_args()
    producer = Producer({"bootstrap.servers": args.bootstrap, "linger.ms": 0, "acks": 1,
                         "queue.buffering.max.messages": 1_000_000})
    ticks: Ticks | None = None
    seq = produced = skipped = 0   # skipped: of earlier rates' Ticks
    print("ready", flush=True)
    buf = b""
    while True:
        wait = 0.2
        if ticks is not None:
            if ticks.take(time.monotonic()):
                for _ in range(ticks.batch):
                    tok = 1000 + seq % events.TOKENS
                    if args.tiers:
                        tok = 1000 if args.tiers == "one" or seq // 10 % 10 == 0 else 1001
                    producer.produce(TOPIC, key=str(tok).encode(),
                                     value=value(seq, tok, args.tiers is not None),
                                     headers=headers(args.centrifugo, tok))
                    seq += 1
                produced += ticks.batch
            producer.poll(0)
            wait = ticks.wait(time.monotonic())
        if select.select([sys.stdin], [], [], wait)[0]:
            chunk = sys.stdin.buffer.raw.read(4096)
            if not chunk:
                break
            cmds, buf = commands(buf, chunk)
            for parts in cmds:
                if parts[0] == b"rate":
                    rate, batch = rate_command(parts)
                    skipped += ticks.skipped if ticks else 0
                    ticks = Ticks(rate, batch, time.monotonic()) if rate > 0 else None
                elif parts[0] == b"stats":
                    total = skipped + (ticks.skipped if ticks else 0)
                    print(json.dumps({"produced": produced, "skipped": total,
                                      "queued": len(producer)}), flush=True)
                elif parts[0] == b"q":
                    producer.flush(2)
                    return
    producer.flush(2)

if __name__ == "__main__":
    main()
