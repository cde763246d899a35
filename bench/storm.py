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
from servers import HERE, WORK, Odinws, label

SUBSCRIBE = '{"type":"subscribe","channels":["odin.token.1000.trade"],"id":"s"}'


def log(msg: str) -> None:
    print(time.strftime("%H:%M:%S"), msg, file=sys.stderr, flush=True)


def raise_open_files(need: int) -> int:
    """
    Raise this process's RLIMIT_NOFILE to C{need} (the hard limit too, when
    root may: not in a container without CAP_SYS_RESOURCE); children inherit
    it. Returns the soft limit in force.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < need:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (need, need))
        except (ValueError, OSError) as e:
            log(f"RLIMIT_NOFILE: hard limit {hard} < {need}, not raised ({e}); "
                f"using {hard}")
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    elif soft != resource.RLIM_INFINITY and soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def build_client() -> str:
    """bench/.work/loadclient, (re)built from bench/loadclient.c when stale."""
    binary = os.path.join(WORK, "loadclient")
    source = os.path.join(HERE, "loadclient.c")
    header = os.path.join(HERE, os.pardir, "odinws_tools", "loadtest", "wsframe.h")
    if not os.path.exists(binary) or max(os.path.getmtime(source), os.path.getmtime(header)) \
            > os.path.getmtime(binary):
        os.makedirs(WORK, exist_ok=True)
        # The same command as bench/setup.sh: the client inflates with zlib.
        subprocess.run(["gcc", "-O2", "-Wall", "-Wextra", "-o", binary, source, "-lm", "-lz"],
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
    if args.head_timeout:
        overrides["listen.head_timeout"] = args.head_timeout
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
            why = f"{label(labels, 'status')} {label(labels, 'reason')}"
            out["rejected"][why] = out["rejected"].get(why, 0) + value
        elif name == "odinws_handoff_wait_seconds_bucket":
            le = label(labels, "le")
            out["wait_buckets"][le] = out["wait_buckets"].get(le, 0) + value
    return out


def somaxconn() -> int | None:
    """net.core.somaxconn: the kernel caps every listen backlog at it."""
    try:
        with open("/proc/sys/net/core/somaxconn") as f:
            return int(f.read())
    except (OSError, ValueError):
        return None


def storm(args: argparse.Namespace, rundir: str) -> dict:
    node = Odinws(rundir, overrides=node_overrides(args))
    # The listener's backlog holds what the parent does not accept yet (it
    # pauses at listen.max_heads): the storm's tail waits there.
    node.overrides["listen.port"] = f"tcp:{node.port}:interface=127.0.0.1:backlog={args.backlog}"
    cap = somaxconn()
    if cap is not None and cap < args.backlog:
        log(f"net.core.somaxconn is {cap}: the kernel caps the backlog of {args.backlog} at it "
            f"(sysctl -w net.core.somaxconn={args.backlog})")
    node.start(10)
    try:
        time.sleep(1.0)
        # One load client per --client-procs, each a share of the clients (a
        # process may have no more descriptors than its RLIMIT_NOFILE).
        shares = [args.clients // args.client_procs + (i < args.clients % args.client_procs)
                  for i in range(args.client_procs)]
        log(f"storm: {args.clients} clients at once ({shares}), {args.shards} shard(s)")
        parent = node.procs[0].pid
        pids = [parent, *children(parent)]
        cpu0 = {pid: cpu_seconds(pid) for pid in pids}
        clients = [Proc(f"loadclient{i}", [build_client(), "-p", str(node.port), "-u",
                                           node.ws_path, "-n", str(n), "-s", str(args.sources),
                                           "-m", str(n), "-F", "-S", SUBSCRIBE], None,
                        log_path=os.path.join(rundir, f"loadclient{i}.log"))
                   for i, n in enumerate(shares)]
        try:
            started = time.monotonic()
            result: dict = {}
            while time.monotonic() - started < args.timeout:
                time.sleep(0.5)
                result = combined([storm_counts(client) for client in clients])
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
            result["head_timeout"] = args.head_timeout or "default"
            result["backlog"] = min(args.backlog, cap) if cap is not None else args.backlog
            return result
        finally:
            for client in clients:
                client.stop()
    finally:
        node.stop()


def storm_counts(client: Proc) -> dict:
    """One load client's storm counts (its stdin command "s")."""
    client.send("s")
    result = client.read_json(10)
    while "subscribed" not in result:  # the "connected" line comes in between
        result = client.read_json(10)
    return result


def combined(results: list[dict]) -> dict:
    """The load clients' counts added up; the times are the latest of them."""
    out: dict = {}
    for result in results:
        for key, value in result.items():
            out[key] = max(out.get(key, 0), value) if key.endswith("_s") else \
                out.get(key, 0) + value
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=5000)
    parser.add_argument("--shards", type=int, default=1)
    parser.add_argument("--client-procs", type=int, default=1,
                        help="load client processes sharing the clients")
    parser.add_argument("--sources", type=int, default=16,
                        help="source addresses 127.0.0.1..127.0.0.N")
    parser.add_argument("--max-handoffs", type=int, default=64,
                        help="supervisor.max_handoffs_in_flight (default: its default)")
    parser.add_argument("--max-heads", type=int, default=0,
                        help="listen.max_heads (default: its default, 4096)")
    parser.add_argument("--head-timeout", type=float, default=0,
                        help="listen.head_timeout, which bounds each wait (default: 10 s)")
    parser.add_argument("--backlog", type=int, default=4096,
                        help="the listener's backlog= (capped by net.core.somaxconn)")
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--rundir", default=os.path.join(WORK, "storm"))
    args = parser.parse_args()
    raise_open_files(max(args.clients // args.client_procs, args.max_heads or 4096) + 2048)
    os.makedirs(args.rundir, exist_ok=True)
    print(json.dumps(storm(args, args.rundir), sort_keys=True), flush=True)


if __name__ == "__main__":
    main()
