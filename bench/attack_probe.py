"""
Everyone else's latency while one client attacks a shard (issue 23,
docs/security.md "Bounded work per client"): a real node (one shard) on
loopback, the test broker, a producer at a steady rate, a probe client
measuring each event's latency (produce to receive), and an attacker; the
shard's CPU over the attack. Bounded: each attack runs C{--seconds}.

    python bench/attack_probe.py --variant before=f1ce214 --variant now=. --attack h1

Attacks (each inside every documented limit of the variant's defaults):

* C{h1}: subscribes to 100 exact channels that match nothing, C{since}
  L{BACK} events behind every partition's newest (16,200 in all: inside
  the scan bound main already had), from 5 connections at 2/s each (10/s:
  C{limits.recovery_cost} allows 2/s per connection);
* C{h2}: the same through event streams, 15 opened per second, the
  positions in C{Last-Event-ID};
* C{h3}: C{snapshot: true} on 100 token wildcards that match nothing,
  27,000 channels cached, 10/s as h1;
* C{h4}: empty ping frames as fast as one connection can send them.

A variant is NAME=REF as in bench/cost.py. Prints one table row per
variant and attack: probe events, p50/p99 latency (ms) before and during
the attack, shard CPU seconds during it, and the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)
sys.path.insert(0, HERE)

import warnings  # noqa: E402

from websockets.sync.client import connect  # noqa: E402

# connect() outside a with block is what a long-lived probe needs.
warnings.filterwarnings("ignore", "connect.. must be used as a context manager")

from tests.helpers.broker import shared_broker  # noqa: E402
from tests.helpers.node import Node  # noqa: E402

PARTITIONS = 3
RETAINED = 27_000
RATE = 200.0
#: How far back the recoveries start, per partition: 60% of what it retains,
#: so that all partitions together (16,200 events) stay inside the scan
#: bound (limits.max_recovery_scan, 20,000) that main had already: past it
#: a recovery is answered too_large having looked at nothing.
BACK = int(RETAINED / PARTITIONS * 0.6)
NOTHING = [f"odin.token.NONE{i}.trade" for i in range(100)]


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Feed(threading.Thread):
    """Produces RATE events/s, each carrying its produce time, until stopped."""

    def __init__(self, broker, topic: str):
        super().__init__(daemon=True)
        self.broker, self.topic = broker, topic
        self.stop = threading.Event()

    def run(self) -> None:
        n = 0
        start = time.monotonic()
        while not self.stop.is_set():
            n += 1
            value = json.dumps({"t": time.time(), "seq": n}).encode()
            self.broker.produce(self.topic, b"P%d" % (n % PARTITIONS), value)
            delay = start + n / RATE - time.monotonic()
            if delay > 0:
                time.sleep(delay)


class Probe(threading.Thread):
    """A client of the probe channels: the latency of every event it receives."""

    def __init__(self, url: str):
        super().__init__(daemon=True)
        self.ws = connect(url, max_size=None)
        self.ws.send(json.dumps({"type": "subscribe",
                                 "channels": [f"odin.token.P{p}.trade" for p in range(PARTITIONS)]}))
        self.latencies: list[tuple[float, float]] = []
        self.done = False

    def run(self) -> None:
        while not self.done:
            try:
                msg = json.loads(self.ws.recv(timeout=1))
            except TimeoutError:
                continue
            except Exception:
                return
            if msg.get("type") == "event":
                now = time.time()
                self.latencies.append((now, (now - msg["data"]["t"]) * 1000))

    def window(self, t0: float, t1: float) -> tuple[int, float, float]:
        got = sorted(lat for t, lat in self.latencies if t0 <= t < t1)
        if not got:
            return 0, float("nan"), float("nan")
        return len(got), statistics.median(got), got[min(len(got) - 1, int(len(got) * 0.99))]


UPGRADE = (b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
           b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
           b"Sec-WebSocket-Version: 13\r\n\r\n")


def deep(positions: list[str]) -> list[tuple[str, str, str, int]]:
    """C{(topic, partition, epoch, offset)} BACK events before each position."""
    out = []
    for pos in positions:
        topic, partition, epoch, high = pos.rsplit(":", 3)
        out.append((topic, partition, epoch, int(high) - BACK))
    return out


def attack_h1(node: Node, positions: list[str], seconds: float, snapshot: bool = False
              ) -> tuple[int, str]:
    """
    5 connections x 2 subscribes per second (what limits.recovery_cost
    allows) to 100 channels that match nothing: deep recoveries (h1), or
    snapshots of 100 token wildcards (h3); how many were sent, and the first
    answer's recovered/reason (h3: its snapshot count).
    """
    if snapshot:
        msg = json.dumps({"type": "subscribe", "snapshot": True,
                          "channels": [f"odin.token.NONE{i}.*" for i in range(100)]})
    else:
        since = [f"{t}:{p}:{e}:{o}" for t, p, e, o in deep(positions)]
        msg = json.dumps({"type": "subscribe", "channels": NOTHING, "since": since})
    conns = [connect(node.url(), max_size=None) for _ in range(5)]
    sent = 0
    first = ""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        tick = time.monotonic()
        for ws in conns:
            try:
                ws.send(msg)
                sent += 1
                while True:   # drain replies
                    reply = json.loads(ws.recv(timeout=0))
                    if not first:
                        first = f"{reply.get('recovered', reply.get('code'))}/" + \
                            str(reply.get("snapshot") if snapshot else reply.get("reason"))
            except TimeoutError:
                pass
            except Exception:
                conns.remove(ws)
                conns.append(connect(node.url(), max_size=None))
        time.sleep(max(0.0, tick + 0.5 - time.monotonic()))
    for ws in conns:
        ws.close()
    return sent, first


def attack_h2(node: Node, positions: list[str], seconds: float) -> tuple[int, str]:
    """
    15 event streams opened per second (inside limits.connection_rate_per_ip)
    on 100 channels that match nothing, with a Last-Event-ID vector BACK
    events behind every partition; how many were opened, the first answer.
    """
    groups: dict[tuple[str, str], list[str]] = {}
    for topic, partition, epoch, offset in deep(positions):
        groups.setdefault((topic, epoch), []).append(f"{partition}:{offset}")
    vector = ";".join(f"{t}~{e}~{','.join(parts)}" for (t, e), parts in sorted(groups.items()))
    head = (f"GET /sse?channels={','.join(NOTHING)} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Accept: text/event-stream\r\nLast-Event-ID: {vector}\r\n\r\n").encode()
    sent = 0
    first = ""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        tick = time.monotonic()
        with socket.create_connection(("127.0.0.1", node.port), timeout=10) as sock:
            sock.sendall(head)
            data = b""
            while True:   # up to the end of the subscribed event, or a refusal
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
                if not data.startswith(b"HTTP/1.1 200") and b"\r\n\r\n" in data:
                    break
                if b"\n\n" in data.partition(b"event: subscribed")[2]:
                    break
            sent += 1
            if not first:
                first = data.split(b"\r\n", 1)[0].decode() + " " + \
                    ("recovered" if b'"recovered":true' in data else "not recovered")
        time.sleep(max(0.0, tick + 1 / 15 - time.monotonic()))
    return sent, first


def attack_h4(node: Node, seconds: float) -> tuple[int, str]:
    """Empty masked ping frames on one raw connection; how many were sent, how it ended."""
    sock = socket.create_connection(("127.0.0.1", node.port), timeout=10)
    sock.sendall(UPGRADE)
    sock.recv(65536)
    ping = b"\x89\x80\x00\x00\x00\x00" * 1000
    sock.setblocking(False)
    sent = 0
    how = "open"
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            sent += sock.send(ping) // 6
        except BlockingIOError:
            time.sleep(0.001)
        except OSError:
            how = "closed"
            break
        try:
            if sock.recv(65536) == b"":
                how = "closed"
                break
        except BlockingIOError:
            pass
        except OSError:
            how = "closed"
            break
    sock.close()
    return sent, how


def run(tree: str, attack: str, seconds: float) -> dict:
    broker = shared_broker()
    topic = f"probe-{os.getpid()}-{int(time.time())}"
    broker.create_topics([topic], partitions=PARTITIONS)
    workdir = tempfile.mkdtemp(prefix="attack-probe-")
    node = Node(workdir, broker.bootstrap, shards=1, settings={"kafka.topics": {topic: "trade"}},
                env={"PYTHONPATH": tree})
    node.start()
    try:
        # Produced once the node consumes: it retains them as it delivers them.
        for n in range(RETAINED):
            # A channel each: 27,000 channels in the snapshot cache (h3).
            broker.produce(topic, b"T%d" % n,
                           json.dumps({"t": time.time(), "n": n}).encode(), partition=n % PARTITIONS)
        broker.flush(60)
        probe = Probe(node.url())
        probe.start()
        feed = Feed(broker, topic)
        feed.start()
        ws = connect(node.url())
        deadline = time.monotonic() + 120
        while True:
            ws.send(json.dumps({"type": "subscribe", "channels": ["odin.token.X.trade"],
                                "since": []}))
            ack = json.loads(ws.recv(timeout=10))
            positions = ack.get("positions") or []
            if sum(int(p.rpartition(":")[2]) + 1 for p in positions) >= RETAINED:
                break
            if time.monotonic() > deadline:
                raise SystemExit("the node did not take the retained events in time")
            time.sleep(0.5)
        ws.close()
        time.sleep(seconds)     # a quiet window first
        [shard] = node.shard_pids()
        t0 = time.time()
        cpu0 = cpu_seconds(shard)
        if attack == "h1":
            sent, how = attack_h1(node, positions, seconds)
        elif attack == "h2":
            sent, how = attack_h2(node, positions, seconds)
        elif attack == "h3":
            sent, how = attack_h1(node, positions, seconds, snapshot=True)
        else:
            sent, how = attack_h4(node, seconds)
        cpu1 = cpu_seconds(shard)
        t1 = time.time()
        time.sleep(2)
        feed.stop.set()
        probe.done = True
        quiet = probe.window(t0 - seconds, t0)
        during = probe.window(t0, t1)
        return {"attack": attack, "sent": sent, "how": how, "quiet": quiet, "during": during,
                "cpu": cpu1 - cpu0, "seconds": t1 - t0, "load": os.getloadavg()[0]}
    finally:
        node.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", action="append", default=[])
    parser.add_argument("--attack", action="append", choices=["h1", "h2", "h3", "h4"], default=[])
    parser.add_argument("--seconds", type=float, default=15.0)
    args = parser.parse_args()
    from cost import Variant
    print("| variant | attack | sent (answer) | probe events quiet/during | p50 ms quiet → during "
          "| p99 ms quiet → during | shard CPU s / wall s | load |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for spec in args.variant or ["now=."]:
        variant = Variant(spec)
        for attack in args.attack or ["h1"]:
            r = run(variant.repo, attack, args.seconds)
            q, d = r["quiet"], r["during"]
            print(f"| {variant.name} ({variant.commit}) | {attack} | {r['sent']} ({r['how']}) "
                  f"| {q[0]}/{d[0]} "
                  f"| {q[1]:.0f} → {d[1]:.0f} | {q[2]:.0f} → {d[2]:.0f} "
                  f"| {r['cpu']:.1f} / {r['seconds']:.1f} | {r['load']:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
