"""
C{python -m odinws_tools.capacity_run} (what C{make capacity} runs): the demo stack
(embedded broker, odinws with two shards, the simulator at a moderate rate)
loaded by C{odinws-loadtest} with 12,000 subscribed connections for 60 s
(C{--connections N}: C{make capacity CONNECTIONS=40000}). The load comes
from the native client (C{--client native}, L{odinws_tools.loadtest.nativeclient}),
so the client takes a small share of the cores the server runs on;
C{--client python} runs the asyncio workers instead.
Exits 0 only when every connection opened and stayed up and no event was
lost, duplicated or out of order (the load test's verdict), 1 otherwise.

The node's settings differ from the demo's only where N connections from
one machine need it (see L{capacity_settings} and docs/performance.md,
"Capacity"). Every process here has the same open-files hard limit, which
only a process with CAP_SYS_RESOURCE can raise (this one tries first,
L{plan_shards}): when one shard could not hold its share of the
connections under it, more shards are started (and said so).
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import shutil
import signal
import sys
import tempfile
import threading
import time

from odin_ws.common import openfiles
from odinws_tools.demo import DemoStack, Interrupted
from odinws_tools.embedded_broker import free_port
from odinws_tools.loadtest import run as loadtest

#: On top of the demo's settings (which already switch the resource guard
#: off: cpu_threshold 0), for 12,000 connections on two shards: all from
#: loopback addresses (per-IP limits raised) and the guard off (the client
#: shares the cores). L{capacity_settings} scales the connection limits.
CAPACITY_SETTINGS = {
    "limits.max_connections": 14000,
    "limits.max_connections_per_shard": 8000,
    "limits.max_connections_per_ip": 14000,
    "limits.connection_rate_per_ip": 2000.0,
    "limits.connection_burst_per_ip": 2000,
    "listen.max_heads_per_ip": 4096,
    "supervisor.max_handoffs_in_flight": 1024,
    "guard.cpu_threshold": 0,
    "guard.memory_threshold": 0,
}


def capacity_settings(connections: int, shards: int) -> dict:
    """
    L{CAPACITY_SETTINGS} for C{connections} on C{shards}: the node takes
    about 15% more than asked (room for an uneven split), every client
    address may hold all of them.
    """
    total = max(14000, math.ceil(connections * 1.15))
    per_shard = max(8000, math.ceil(total / shards))
    return {**CAPACITY_SETTINGS, "limits.max_connections": total,
            "limits.max_connections_per_shard": per_shard,
            "limits.max_connections_per_ip": total}


def plan_shards(connections: int, wanted: int, hard: int | None = None) -> int:
    """
    C{wanted} shards (0: two), or more when one shard could not hold its
    share (with 10% for an uneven split) under the open-files hard limit.
    Without C{hard}, this process first raises its own limits to what one
    of C{wanted} shards needs (the hard one too, if it may: L{openfiles.ensure});
    the node and the load client inherit them.
    """
    if hard is None:
        share = math.ceil(connections * 1.1 / (wanted or 2))
        _, hard = openfiles.ensure(share + openfiles.HEADROOM)
    room = max(1, openfiles.connection_room(hard))
    return max(wanted or 2, math.ceil(connections * 1.1 / room))


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m odinws_tools.capacity_run",
        description="Start the demo stack and hold N subscribed connections against it "
                    "with odinws-loadtest; exit 1 on any failed connection or lost event.")
    p.add_argument("--connections", type=int, default=12000)
    p.add_argument("--ramp", default="300/s", help="connections opened per second")
    p.add_argument("--duration", type=float, default=60.0, help="seconds to hold")
    p.add_argument("--rate", type=int, default=4,
                   help="simulator ceiling, events/s (it averages about 60%% of it)")
    p.add_argument("--tokens", type=int, default=20, help="simulated tokens")
    p.add_argument("--shards", type=int, default=0,
                   help="shard processes (default: 2, more if the open-files hard limit "
                        "needs them)")
    p.add_argument("--channels", default="odin.token.*.*")
    p.add_argument("--report", default="artifacts/capacity", help="report directory")
    p.add_argument("--client", choices=("native", "python"), default="native",
                   help="odinws-loadtest's client: native (C, built on first use) or python")
    p.add_argument("--native-binary", default="",
                   help="a built odinws-loadclient (make capacity builds one)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    began = time.monotonic()
    stopping = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stopping.set())
    shards = plan_shards(args.connections, args.shards)
    if shards != (args.shards or 2):
        print(f"capacity: {shards} shards: under the open-files hard limit "
              f"({resource.getrlimit(resource.RLIMIT_NOFILE)[1]}) one process holds at most "
              f"{openfiles.connection_room(resource.getrlimit(resource.RLIMIT_NOFILE)[1])} "
              f"connections", flush=True)
    workdir = tempfile.mkdtemp(prefix="odinws-capacity-")
    port = free_port()
    backlog = {"listen.port": f"tcp:{port}:interface=127.0.0.1:backlog=4096"}
    stack = DemoStack(workdir, port=port, kafka_port=0, shards=shards, rate=args.rate,
                      tokens=args.tokens, say=lambda line: print(line, flush=True),
                      cancel=stopping,
                      settings={**capacity_settings(args.connections, shards), **backlog})
    try:
        stack.start()
    except Interrupted:
        shutil.rmtree(workdir, ignore_errors=True)
        return 130
    except Exception as e:  # noqa: BLE001 - reported with the logs' place, then exit
        print(f"capacity: could not start the stack: {e}\nlogs: {workdir}", flush=True)
        return 1
    try:
        # Let the consumer group settle and the simulator's first records arrive.
        stack.cancel.wait(3.0)
        code = loadtest.main([
            "--url", f"ws://127.0.0.1:{port}/ws", "--connections", str(args.connections),
            "--ramp", args.ramp, "--duration", str(args.duration), "--channels", args.channels,
            "--report", args.report, "--client", args.client,
            *(["--native-binary", args.native_binary] if args.native_binary else [])])
        problem = stack.failed()
    finally:
        stack.stop()
    if problem:
        print(f"capacity: {problem}", flush=True)
        code = 1
    os.makedirs(args.report, exist_ok=True)
    for name in ("odinws.log", "simulate.log"):
        if os.path.exists(os.path.join(workdir, name)):
            shutil.copy(os.path.join(workdir, name), os.path.join(args.report, name))
    shutil.rmtree(workdir, ignore_errors=True)
    print(f"capacity: {'PASS' if code == 0 else 'FAIL'} in {time.monotonic() - began:.0f} s "
          f"(report: {args.report}/report.html)", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
