"""
A backlog arriving at once (issue 22): C{--connections} WebSocket clients
with 32 KiB receive buffers, subscribed to everything and reading as fast as
they can (one asyncio process, frames counted by their header), and
C{--events} events produced at once to a real node (two shards) on the test
broker. Prints the frames expected and received, the clients that got fewer,
the gap notices, the seconds until the last frame, and the node's catch-up
counters. Before catch-up from history (issue 22) 6,300 of 15,000,000 frames
were dropped in this case, unannounced.

    python bench/backlog.py --connections 5000 --events 3000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.helpers.broker import fast_kafka, new_broker  # noqa: E402
from tests.helpers.node import Node, http_get  # noqa: E402
from tests.helpers.rawclients import Tally, open_client, read_all  # noqa: E402

COUNTERS = ("odinws_events_delivered", "odinws_events_caught_up", "odinws_connections_fell",
            "odinws_gaps", "odinws_events_dropped_total")


async def client(i: int, port: int, tally: Tally, gate: asyncio.Semaphore) -> None:
    reader, _ = await open_client(i, port, tally, gate)
    await read_all(i, reader, tally)


async def measure(port: int, produce, args) -> dict:
    tally = Tally(args.connections)
    gate = asyncio.Semaphore(300)
    tasks = [asyncio.create_task(client(i, port, tally, gate)) for i in range(args.connections)]
    t0 = time.monotonic()
    while tally.opened < args.connections:
        await asyncio.sleep(0.2)
    opened = time.monotonic() - t0
    await asyncio.sleep(1)
    start = time.monotonic()
    produce()
    expected = args.connections * args.events
    last, idle = -1, 0
    while sum(tally.counts) < expected and idle < args.idle:
        await asyncio.sleep(1)
        total = sum(tally.counts)
        idle = idle + 1 if total == last else 0
        last = total
    took = time.monotonic() - start - (idle if idle >= args.idle else 0)
    for task in tasks:
        task.cancel()
    received = sum(tally.counts)
    return {"connections": args.connections, "events": args.events, "opened_s": round(opened, 1),
            "frames_expected": expected, "frames_received": received,
            "missing": expected - received,
            "connections_short": sum(1 for c in tally.counts if c < args.events),
            "gap_notices": sum(tally.gaps), "seconds_to_last_frame": round(took, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--connections", type=int, default=5000)
    p.add_argument("--events", type=int, default=3000)
    p.add_argument("--pad", type=int, default=200, help="bytes of padding per event")
    p.add_argument("--idle", type=int, default=20, help="give up after this many s without a frame")
    args = p.parse_args()
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    work = tempfile.mkdtemp(prefix="odinws-backlog-")
    broker = new_broker(work)
    broker.start()
    topic = "backlog"
    broker.create_topics([topic], partitions=4)
    settings = fast_kafka(broker.kind)
    settings.update({
        "kafka.topics": {topic: "trade"}, "listen.restart_hold": 0,
        "limits.max_connections_per_ip": 4 * args.connections,
        "limits.connection_rate_per_ip": 100000.0, "limits.connection_burst_per_ip": 20000,
        "listen.max_heads_per_ip": 4096, "supervisor.max_handoffs_in_flight": 1024,
        # These clients answer no ping: none is sent.
        "keepalive.ping_interval": 0, "guard.cpu_threshold": 0, "guard.memory_threshold": 0})
    node = Node(work, broker.bootstrap, shards=2, settings=settings)
    try:
        node.start()
        value = json.dumps({"pad": "x" * args.pad}).encode()

        def produce() -> None:
            for k in range(args.events):
                broker.produce(topic, b"T%d" % (k % 16), value, partition=k % 4)
            broker.flush()
        result = asyncio.run(measure(node.port, produce, args))
        result["load_average"] = os.getloadavg()[0]
        print(json.dumps(result))
        _, _, body = http_get(node.port, "/metrics")
        for line in body.decode().splitlines():
            if line.startswith(COUNTERS):
                print(line)
    finally:
        node.stop()
        broker.stop()


if __name__ == "__main__":
    main()
