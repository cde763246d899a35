"""
A reconnection storm (issue 22, docs/performance.md "Reconnection storms"):
N clients of the C load client open their connections at the same moment
to a fresh odinws node (as every client of a drained node does), each
upgrades and subscribes; the run reports how many were subscribed, how many
refused (by status) or failed, the time until the last one was upgraded and
subscribed, and the node's own wait metrics (odinws_handoff_wait_seconds,
odinws_handoff_wait_timeouts_total, odinws_rejected_connections_total).

    python bench/storm.py --clients 5000 --shards 1
    python bench/storm.py --clients 20000 --shards 2

The node runs with the default supervisor.max_handoffs_in_flight (64) and
head timeout; the per-IP limits are lifted (the clients come from
--sources loopback addresses, standing for thousands of clients behind
their own addresses) and the node's connection limits are set to the storm's
size. Run as root for more than about 19,000 clients: the script raises its
own hard RLIMIT_NOFILE (the node and the load client inherit it).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from procs import Proc, children, cpu_seconds
from servers import HERE, WORK, Odinws

SUBSCRIBE = '{"type":"subscribe","channels":["odin.token.1000.trade"],"id":"s"}'


def log(msg: str) -> None:
    print(time.strftime("%H:%M:%S"), msg, file=sys.stderr, flush=True)


def raise_open_files(need: int) -> None:
    """Raise this process's RLIMIT_NOFILE (hard too, as root) to C{need}; children inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < need:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (need, need))
        except (ValueError, OSError) as e:
            sys.exit(f"RLIMIT_NOFILE hard limit {hard} < {need} and cannot be raised "
                     f"(run as root): {e}")
    elif soft != resource.RLIM_INFINITY and soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))


def build_client() -> str:
    """bench/.work/loadclient, (re)built from bench/loadclient.c when stale."""
    binary = os.path.join(WORK, "loadclient")
    source = os.path.join(HERE, "loadclient.c")
    if not os.path.exists(binary) or os.path.getmtime(source) > os.path.getmtime(binary):
        os.makedirs(WORK, exist_ok=True)
        subprocess.run(["gcc", "-O2", "-Wall", "-Wextra", "-o", binary, source, "-lm"],
                       check=True)
    return binary


def node_overrides(args: argparse.Namespace) -> dict:
    """Settings over the bench's odinws instance: defaults where the storm is measured."""
    n = args.clients
    overrides = {
        "shards": args.shards,
        "cpu_affinity": "auto",
        "supervisor.max_handoffs_in_flight": args.max_handoffs,
        "limits.max_connections": n + 1000,
        "limits.max_connections_per_shard": n + 1000,
        "limits.max_connections_per_ip": n,
    }
    if args.max_heads:
        overrides["listen.max_heads"] = args.max_heads
    return overrides


def node_metrics(node: Odinws) -> dict:
    """The node's storm metrics, summed over processes."""
    wanted = {"odinws_handoff_wait_seconds_count": "waited",
              "odinws_handoff_wait_seconds_sum": "wait_seconds_sum",
              "odinws_handoff_wait_timeouts_total": "wait_timeouts",
              "odinws_handoffs_abandoned_total": "abandoned",
              "odinws_handoff_seconds_count": "handoffs",
              "odinws_handoff_seconds_sum": "handoff_seconds_sum"}
    out: dict = {v: 0.0 for v in wanted.values()}
    out["rejected"] = {}
    out["wait_buckets"] = {}
    for name, labels, value in node.samples():
        if name in wanted:
            out[wanted[name]] += value
        elif name == "odinws_rejected_connections_total" and value:
            out["rejected"][labels] = value
        elif name == "odinws_handoff_wait_seconds_bucket":
            out["wait_buckets"][labels] = out["wait_buckets"].get(labels, 0) + value
    return out


def storm(args: argparse.Namespace, rundir: str) -> dict:
    node = Odinws(rundir, overrides=node_overrides(args))
    node.start(10)
    try:
        time.sleep(1.0)
        argv = [build_client(), "-p", str(node.port), "-u", node.ws_path,
                "-n", str(args.clients), "-s", str(args.sources), "-m", str(args.clients),
                "-F", "-S", SUBSCRIBE]
        log(f"storm: {args.clients} clients at once, {args.shards} shard(s)")
        parent = node.procs[0].pid
        pids = [parent, *children(parent)]
        cpu0 = {pid: cpu_seconds(pid) for pid in pids}
        client = Proc("loadclient", argv, None, log_path=os.path.join(rundir, "loadclient.log"))
        try:
            started = time.monotonic()
            result: dict = {}
            while time.monotonic() - started < args.timeout:
                time.sleep(0.5)
                client.send("s")
                result = client.read_json(10)
                while "subscribed" not in result:  # the "connected" line comes in between
                    result = client.read_json(10)
                # Refused connections are counted in failed too.
                if result["subscribed"] + result["failed"] >= args.clients:
                    break
            wall = time.monotonic() - started
            # CPU the node's processes had meanwhile: on a busy machine, a
            # share well below 1 per process means they waited for a core.
            result["node_cpu_s"] = {("parent" if pid == parent else f"shard pid {pid}"):
                                    round(cpu_seconds(pid) - cpu0[pid], 2) for pid in pids}
            result["wall_s"] = round(wall, 2)
            result["loadavg"] = os.getloadavg()[0]
            time.sleep(1.5)  # the node's 1 s metrics cache
            result["node"] = node_metrics(node)
            result["shards"] = args.shards
            result["max_handoffs_in_flight"] = args.max_handoffs
            result["max_heads"] = args.max_heads or "default"
            return result
        finally:
            client.stop()
    finally:
        node.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=5000)
    parser.add_argument("--shards", type=int, default=1)
    parser.add_argument("--sources", type=int, default=16,
                        help="source addresses 127.0.0.1..127.0.0.N")
    parser.add_argument("--max-handoffs", type=int, default=64,
                        help="supervisor.max_handoffs_in_flight (default: its default)")
    parser.add_argument("--max-heads", type=int, default=0,
                        help="listen.max_heads (default: its default, 4096)")
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--rundir", default=os.path.join(WORK, "storm"))
    args = parser.parse_args()
    raise_open_files(args.clients * 2 + 4096)
    os.makedirs(args.rundir, exist_ok=True)
    print(json.dumps(storm(args, args.rundir), sort_keys=True), flush=True)


if __name__ == "__main__":
    main()
