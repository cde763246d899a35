"""
The fan-out's per-connection loop alone, in this process: CONNECTIONS
connections on Unix socketpairs (their server ends adopted by the epoll
reactor, an Outbox on each as the shard makes it), events matched in a
L{SubscriptionIndex}, framed and written through L{Fanout} with the C send
loop (--native) or the pure-Python one. Two workloads, each event written
in its own turn (the bench's turn mode):

  - all: every connection subscribed to every event;
  - tokens: each connection follows 3 of 100 tokens (bench/run.py's random
    tokens), 10 events per delivery.

Prints one JSON line: frames delivered, seconds of the measured loop and
microseconds per frame. The client ends are drained between rounds, outside
the measured time (--no-drain: never; the socket buffers hold a short run).
L{costs} (called by bench/cost.py) runs it for both loops and workloads,
timed and under callgrind for instructions per frame: the difference of two
runs of different lengths, so that start-up cancels out. Callgrind counts
user-space instructions only: the kernel's send is the same in both loops.

    python bench/fanout_loop.py --native on --workload all --rounds 20

--deflate: every connection negotiated permessage-deflate (15-bit window),
so each event is also compressed, once (odin_ws/shard/delivery/deflate.py):
the on/off ratio is compression's cost per delivered frame.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

HERE = os.path.abspath(__file__)

if __name__ == "__main__":
    from twisted.internet import epollreactor
    epollreactor.install()

from autobahn.websocket.protocol import WebSocketProtocol  # noqa: E402
from twisted.internet import reactor  # noqa: E402
from twisted.internet.protocol import Factory, Protocol  # noqa: E402

from odin_ws.shard.delivery.deflate import DEFAULT_WINDOW_BITS, Deflate, variant  # noqa: E402
from odin_ws.shard.delivery.fanout import Fanout  # noqa: E402
from odin_ws.shard.delivery.frames import text_frame  # noqa: E402
from odin_ws.shard.delivery.nativesend import select  # noqa: E402
from odin_ws.shard.delivery.outbox import Outbox, OutboxHolder  # noqa: E402
from odin_ws.shard.delivery.subscriptions import SubscriptionIndex  # noqa: E402
from odin_ws.shard.delivery.writestats import WriteStats  # noqa: E402

EVENT = (b'{"channel":"odin.token.%s.trade","data":{"t_us":1764400000000000,"seq":%d,'
         b'"price":0.00001234,"amount":1234.5678,"side":"buy"}}')


class Holder(OutboxHolder, Protocol):
    """The shard's protocol as far as its Outbox is concerned: open, reads nothing."""

    def connectionMade(self) -> None:
        self.state = WebSocketProtocol.STATE_OPEN


def connect(count: int) -> tuple[list[Holder], list[socket.socket]]:
    """C{count} socketpairs: the reactor's ends with a Holder, the client ends."""
    protocols: list[Holder] = []
    clients = []
    factory = Factory.forProtocol(Holder)
    build = factory.buildProtocol

    def keep(addr):
        p = build(addr)
        protocols.append(p)
        return p
    factory.buildProtocol = keep  # type: ignore[method-assign]
    for _ in range(count):
        server, client = socket.socketpair()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        server.setblocking(False)
        reactor.adoptStreamConnection(server.fileno(), socket.AF_UNIX, factory)
        server.close()
        client.setblocking(False)
        clients.append(client)
    return protocols, clients


def drain(clients: list[socket.socket]) -> int:
    got = 0
    for c in clients:
        try:
            while True:
                data = c.recv(1 << 20)
                if not data:
                    break
                got += len(data)
        except BlockingIOError:
            pass
    return got


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--native", choices=("on", "off"), default="on")
    ap.add_argument("--workload", choices=("all", "tokens"), default="all")
    ap.add_argument("--connections", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--events", type=int, default=10, help="events per round")
    ap.add_argument("--no-drain", dest="drain", action="store_false")
    ap.add_argument("--deflate", action="store_true", help="every connection compressing")
    args = ap.parse_args()
    stats = WriteStats()
    # No threshold: the bench's event (~125 bytes) is under the default 128.
    deflate = Deflate(stats, True, 0)
    fanout = Fanout(reactor, stats, 0.0, select(args.native).send_runs, deflate)
    protocols, clients = connect(args.connections)
    reactor.runUntilCurrent()
    reactor.doIteration(0)
    index = SubscriptionIndex()
    rng = random.Random(7)
    for p in protocols:
        p.outbox = Outbox(p, fanout, lambda t: "drop", 1 << 22, 5.0, lambda: None)
        if args.deflate:
            p.outbox.variant = v = variant(DEFAULT_WINDOW_BITS)
            deflate.opened(v)
        tokens = range(100) if args.workload == "all" else rng.sample(range(100), 3)
        if args.workload == "all":
            index.add(p.outbox, "*", "trade")
        else:
            for t in tokens:
                index.add(p.outbox, str(t), "trade")
    seq = 0
    spent = cpu = 0.0
    for _ in range(args.rounds):
        events = []
        for _ in range(args.events):
            token = str(rng.randrange(100))
            events.append((token, EVENT % (token.encode(), seq)))
            seq += 1
        t0 = time.perf_counter()
        c0 = time.process_time()
        if args.workload == "all":
            for token, payload in events:     # one event per turn
                subscribers = index.match(token, "trade")
                fanout.publish_run([(text_frame(payload), "c", "trade")], subscribers)
                fanout.flush()
        else:
            for token, payload in events:     # a delivery of 10 events, each its own run
                subscribers = index.match(token, "trade")
                fanout.publish_run([(text_frame(payload), "c", "trade")], subscribers)
            fanout.flush()
        spent += time.perf_counter() - t0
        cpu += time.process_time() - c0
        if args.drain:
            drain(clients)
    assert stats.fallbacks == stats.partial == 0, "the kernel refused: raise SO_SNDBUF"
    print(json.dumps({"native": args.native, "workload": args.workload, "deflate": args.deflate,
                      "deflated": stats.deflated, "bytes_per_frame": stats.bytes_out / stats.delivered,
                      "connections": args.connections, "frames": stats.delivered,
                      "sends": stats.writes, "seconds": spent,
                      "us_per_frame": spent / stats.delivered * 1e6,
                      # CPU time (user + system): on a loaded machine the wall time
                      # mostly measures the neighbours.
                      "cpu_us_per_frame": cpu / stats.delivered * 1e6}))



#: Rounds of the short and the long run under callgrind, per workload.
CALLGRIND_ROUNDS = {"all": (2, 4), "tokens": (20, 40)}


def run(*args: str, valgrind: bool = False) -> tuple[dict, int | None]:
    """One run of this script: its JSON line, and the instructions callgrind collected."""
    cmd = [sys.executable, HERE, *args]
    if valgrind:
        cmd = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", *cmd]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    found = re.search(r"Collected : (\d+)", done.stderr)
    return json.loads(done.stdout.strip().splitlines()[-1]), int(found.group(1)) if found else None


def costs(connections: int = 1000) -> dict:
    """
    For each workload and loop: microseconds per frame (best of 3 timed runs)
    and, where valgrind is installed, instructions per frame.
    """
    out: dict = {"connections": connections, "rows": []}
    for workload, (short, long) in CALLGRIND_ROUNDS.items():
        for native in ("off", "on"):
            args = ("--native", native, "--workload", workload, "--connections", str(connections))
            timed = [run(*args, "--rounds", "20")[0] for _ in range(3)]
            row = {"workload": workload, "native": native,
                   "us_per_frame": min(t["us_per_frame"] for t in timed),
                   "sends_per_frame": timed[0]["sends"] / timed[0]["frames"]}
            if shutil.which("valgrind"):
                (a, ia), (b, ib) = (run(*args, "--rounds", str(n), "--no-drain", valgrind=True)
                                    for n in (short, long))
                row["instructions_per_frame"] = (ib - ia) / (b["frames"] - a["frames"])
            out["rows"].append(row)
    return out


def render(loop: dict) -> str:
    """The table of L{costs}, Python loop against the C one."""
    lines = [f"The fan-out loop alone (bench/fanout_loop.py: {loop['connections']:,} connections "
             "on socketpairs, one process; best of 3 timed runs; instructions per frame from "
             "callgrind, user space only):", "",
             "| workload | loop | µs per frame | instructions per frame | sends per frame |",
             "|---|---|---:|---:|---:|"]
    for r in loop["rows"]:
        ins = r.get("instructions_per_frame")
        lines.append(f"| {r['workload']} | {'C' if r['native'] == 'on' else 'Python'} | "
                     f"{r['us_per_frame']:.2f} | " + (f"{ins:,.0f}" if ins else "–")
                     + f" | {r['sends_per_frame']:.2f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
