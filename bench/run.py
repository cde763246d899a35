"""
The fan-out benchmark: odinws (one shard) against a CPython raw ceiling, Node
ws, Python websockets, nginx + nchan and Centrifugo, same events, same load client,
server on CPU 0 and load client on CPU 1. Prints a table and writes it into
docs/performance.md.

    make bench                       # everything (~20 min)
    python bench/run.py --servers node-ws --conns 1000 --no-slow   # a quick look
    python bench/run.py --conns "" --no-slow --flush-conns ""      # only the random-tokens cells
    python bench/run.py --servers odinws,odinws-sse --conns 5000 --no-slow --random-conns "" \
        --flush-conns ""                                            # SSE against WebSocket
    python bench/run.py --servers odinws,centrifugo --conns 1000 --no-slow --flush-conns "" \
        --no-doc                                                    # odinws against Centrifugo

Run bench/setup.sh first (make bench does). See docs/performance.md.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import plot
import report
from procs import CoreMeter, CpuMeter, Proc, rss_bytes
from servers import CLIENT_CPU, HERE, SERVERS, WORK, Odinws

MODES = {10: "burst", 1: "turn"}
SETTLE = 0.7      # seconds after a rate change before a window starts
WINDOW = 2.0      # seconds of one measurement window
HALF_SETTLE = 3.0  # seconds at half the maximum before its window: a server that batches
                  # more when behind reaches its steady batch size (not the ramp-up's)
RAMP = 1.6        # rate factor between ramp steps
REFINE = 1.3      # a failed step more than this above the last kept one: one step between
RAMP_STEPS = 17   # most windows of one ramp (the refined steps included)
COMMON_CONNS = 1000  # cells with one more own-share window, at COMMON_FPS
COMMON_FPS = 50_000.0  # frames/s: half of cpython-raw's 1k maximum or less, on these machines
DRAIN_LIMIT = 60.0  # seconds a server may take to deliver its backlog after a saturated step
KEPT_UP = 0.93    # delivered/offered at or above this = the server kept up
MAX_WINDOW = 6.0  # longest window (slow bursts: see window_for)
P99_BOUND = 500.0  # ms; above it the server is behind even if the rate matches
SRC_ADDRS = 8     # 127.0.0.1..127.0.0.8 as source addresses
SSE_CONNS = 5000  # the one size of the Server-Sent Events cell (odinws-sse)
#: Servers only in the random-tokens cells: odinws with poll_batch = the burst
#: size, beside the shipped setting (bench/servers.py, OdinwsPerTick).
RANDOM_ONLY = {"odinws-tick"}
#: The sizes of the pure-Python send loop's cells (odinws-py): those of the targets.
PYTHON_LOOP_CONNS = (1000, 5000)


def log(msg: str) -> None:
    print(time.strftime("%H:%M:%S"), msg, flush=True)


class Instance:
    """One server process tree with N connected clients of the load client."""

    def __init__(self, server, conns: int, slow_every: int = 0):
        self.server = server
        self.conns = conns
        self.fast = conns - (conns // slow_every if slow_every else 0)
        # Subscribers per event: every fast client, or in the random-tokens
        # cells K of N tokens each, events rotating over the N tokens.
        per, tokens = server.random or (1, 1)
        self.fanout = self.fast * per / tokens
        self.slow_every = slow_every
        self.client: Proc | None = None

    def open(self, batch: int, rundir: str) -> dict:
        srv = self.server
        srv.start(batch)
        time.sleep(1.0)
        rss0 = self.rss()
        argv = [os.path.join(WORK, "loadclient"), "-p", str(srv.port), "-u", srv.ws_path,
                "-n", str(self.conns), "-s", str(SRC_ADDRS), "-m", "128"] + srv.client_args()
        if self.slow_every:
            argv += ["-k", str(self.slow_every)]
        self.client = Proc("loadclient", argv, CLIENT_CPU,
                           log_path=os.path.join(rundir, "loadclient.log"))
        info = self.client.read_json(timeout=240)
        if info["connected"] < self.conns:
            log(f"  only {info['connected']} of {self.conns} connected ({info['failed']} failed)")
        time.sleep(2.0)
        rss1 = self.rss()
        self.cpu = CpuMeter(srv.data_pids())
        self.cores = CoreMeter()
        return {"connect_s": info["connect_s"], "connected": info["connected"],
                "rss0": rss0, "rss_idle": rss1,
                "rss_per_conn": (rss1 - rss0) / max(1, info["connected"])}

    def rss(self) -> int:
        return sum(rss_bytes(p) for p in self.server.data_pids())

    def set_rate(self, rate: float, batch: int) -> None:
        self.server.set_rate(self.client, rate, batch)

    def window(self, seconds: float) -> dict:
        """Client stats of a window of C{seconds}, with server CPU and RSS."""
        self.client.send("w")
        self.client.read_json(10)
        self.cpu.reset()
        self.cores.reset()
        time.sleep(seconds)
        self.client.send("w")
        st = self.client.read_json(10)
        st["server_cpu"] = self.cpu.share()
        cores = self.cores.shares()
        st["core0"], st["core1"] = cores.get(0, 0.0), cores.get(1, 0.0)
        st["fps"] = st["frames"] / st["dt"] if st["dt"] > 0 else 0.0
        st["rss"] = self.rss()
        return st

    def drain(self, limit: float = DRAIN_LIMIT) -> bool:
        """
        Stop events and wait until nothing arrives for half a second; False
        if frames still came after C{limit} seconds (a window after it
        measures that backlog, and is marked so).
        """
        for batch in self.server.batches[:1]:
            self.set_rate(0, batch)
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            if self.window(0.5)["frames"] == 0:
                return True
        log(f"    {self.server.name}: still delivering a backlog after {limit:g}s of drain")
        return False

    def warm_up(self, batch: int) -> None:
        """
        Send a trickle until the clients see events (odinws, Centrifugo: the
        consumer joined). Centrifugo's consumer starts at the earliest offset
        after its ~20 s join on Tansu, so the trickle is a backlog to drain:
        half an event per second keeps it small.
        """
        self.set_rate(0.5, 1)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.window(0.5)["frames"] > 0:
                self.drain()
                return
        raise RuntimeError(f"{self.server.name}: no events reached the clients in 120s")

    def close(self) -> None:
        if self.client is not None:
            try:
                self.client.send("q")
            except OSError:
                pass
            self.client.stop()
            self.client = None
        self.server.stop()


def summary(st: dict, **extra) -> dict:
    keys = ("fps", "p50_ms", "p99_ms", "max_ms", "cpu", "server_cpu", "core0", "core1", "rss",
            "starved", "reads", "frames",
            "open", "closed", "pub_skipped")
    return {**{k: st.get(k) for k in keys}, **extra}


def window_for(rate: float, batch: int) -> tuple[float, float]:
    """
    Window length and kept-up threshold for a rate: a window should hold at
    least 10 bursts, else one burst more or less would decide; when it cannot
    (capped at MAX_WINDOW) the threshold allows for one and a half bursts.
    """
    secs = min(MAX_WINDOW, max(WINDOW, 10 * batch / rate))
    bursts = secs * rate / batch
    return secs, min(KEPT_UP, 1 - 1.5 / bursts)


def own_share(inst: Instance, seconds: float) -> tuple[dict, dict | None]:
    """
    A window, and the server's own share of the latency in it where it
    measures one: odinws from its /metrics histogram (consumed from Kafka to
    handed to the last subscriber's socket), cpython-raw from its own clock
    (a tick's due time to its last send()).
    """
    server = inst.server
    if not hasattr(server, "own_share"):
        return inst.window(seconds), None
    server.own_share_begin()
    st = inst.window(seconds)
    return st, server.own_share()


def ramp(inst: Instance, batch: int, start_fps: float, common: bool = False) -> dict:
    """
    Raise the event rate until the server falls behind; its best rate is the
    max. C{common}: also the own share at L{COMMON_FPS} (1,000 connections).
    """
    rate = max(0.5, start_fps / inst.fanout)
    steps, kept = [], None
    failed = None  # the lowest rate it did not keep up with, while a step between is tried
    for _ in range(RAMP_STEPS):
        inst.set_rate(rate, batch)
        time.sleep(SETTLE)
        secs, threshold = window_for(rate, batch)
        st = inst.window(secs)
        offered = rate * inst.fanout
        # Writing one event to 15k sockets one after another takes a good part of
        # a second on any of these servers, so the bound grows with the fan-out.
        bound = max(P99_BOUND, inst.conns / 15)
        ok = st["fps"] >= threshold * offered and 0 <= st["p99_ms"] < bound
        steps.append(summary(st, rate=rate, offered=offered, kept_up=ok))
        log(f"    {MODES[batch]:5} {rate:9.1f} ev/s offered {offered / 1e3:8.1f}k "
            f"delivered {st['fps'] / 1e3:8.1f}k p50 {st['p50_ms']:8.2f} p99 {st['p99_ms']:8.2f} ms"
            f" srv {st['server_cpu']:.0%} (core0 {st['core0']:.0%}) cli {st['cpu']:.0%}")
        if not ok and len(steps) == 1 and rate > 1.0:
            # The guess from a smaller cell was already too high: start lower
            # (a saturated first step says little about the maximum).
            inst.drain()
            rate = max(0.5, rate / 4)
            steps[0]["discarded"] = True
            continue
        if ok:
            kept = rate
            if failed is not None and rate < failed:
                # The step between held: back to the rate it did not keep up
                # with, for its saturated windows (or, keeping up now, on).
                rate = failed
            else:
                failed = None
                rate *= RAMP
            continue
        failed = rate
        if kept is not None and failed / kept > REFINE:
            # The steps are 1.6x apart: one between the last kept and this
            # one tells the maximum to 1.26x (a ratio of two cells near 1
            # would otherwise read 0.62 or 1 by where their steps fell).
            inst.drain()
            rate = math.sqrt(kept * failed)
            continue
        break
    saturated = not steps[-1]["kept_up"]
    sat = [steps[-1]["fps"]]
    if saturated:  # two more windows at the rate the server could not keep up with
        for _ in range(2):
            st = inst.window(secs)
            sat.append(st["fps"])
            steps.append(summary(st, rate=rate, offered=rate * inst.fanout, kept_up=False))
    steps = [s for s in steps if not s.get("discarded")]
    best_kept = max([s["fps"] for s in steps if s["kept_up"]], default=0.0)
    max_fps = max(statistics.median(sat), best_kept) if saturated else best_kept
    # The client's core also runs the Kafka-fed servers' broker and producer
    # (and odinws's parent): saturated, it bounds the cell, not the server.
    client_bound = any(s["cpu"] >= 0.95 or (s.get("core1") or 0.0) >= 0.95
                       for s in steps if not s["kept_up"]) or not saturated
    drained = inst.drain()
    if not max_fps:
        raise RuntimeError(f"{inst.server.name}: no step delivered frames (see its logs)")
    # Latency at half the maximum delivered rate.
    half_rate = 0.5 * max_fps / inst.fanout
    inst.set_rate(half_rate, batch)
    time.sleep(HALF_SETTLE)
    st, own = own_share(inst, max(3.0, window_for(half_rate, batch)[0]))
    half = summary(st, rate=half_rate, offered=half_rate * inst.fanout, own=own)
    if not drained:
        half["backlog"] = True
    log(f"    {MODES[batch]:5} max {max_fps / 1e3:.1f}k frames/s; at half: p50 "
        f"{st['p50_ms']:.2f} p99 {st['p99_ms']:.2f} ms"
        + (f"; own share p50 {own['p50_ms']:.2f} p99 {own['p99_ms']:.2f} ms" if own else ""))
    at_common = None
    if common and inst.conns == COMMON_CONNS and hasattr(inst.server, "own_share"):
        # The own share at one rate for every server that measures it (odinws,
        # cpython-raw): at half of a batching maximum it is the time of a
        # round carrying a backlog; here, of one event's (or burst's) fan-out.
        inst.drain()
        common_rate = COMMON_FPS / inst.fanout
        inst.set_rate(common_rate, batch)
        time.sleep(HALF_SETTLE)
        st, own = own_share(inst, max(3.0, window_for(common_rate, batch)[0]))
        at_common = summary(st, rate=common_rate, offered=COMMON_FPS, own=own)
        if own:
            log(f"    {MODES[batch]:5} at {COMMON_FPS / 1e3:.0f}k frames/s: p99 "
                f"{st['p99_ms']:.2f} ms; own share p50 {own['p50_ms']:.2f} p99 {own['p99_ms']:.2f} ms")
    inst.drain()
    return {"mode": MODES[batch], "batch": batch, "max_fps": max_fps, "sat_windows": sat,
            "saturated": saturated, "client_bound": client_bound, "kept_rate": kept,
            "steps": steps, "half": half, "common": at_common}


def run_cell(name: str, conns: int, batches: tuple, rundir: str, guesses: dict,
             random: tuple[int, int] | None = None, flush_delay: float = 0.0) -> list[dict]:
    """
    One server instance with C{conns} clients, ramped in each mode of
    C{batches}; C{random}: the random-tokens subscriptions (see
    L{run_random_cells}); C{flush_delay}: odinws's outbound.flush_delay.
    """
    cls = SERVERS[name]
    server = cls(rundir, batches[0], flush_delay) if issubclass(cls, Odinws) else cls(rundir)
    if random:
        server.filter_tokens(*random)
    kind = {"kind": "random", "random": list(random)} if random else {}
    if flush_delay:
        kind["flush_delay"] = flush_delay
    key = (name, bool(random), flush_delay)
    inst = Instance(server, conns)
    out = []
    try:
        idle = inst.open(batches[0], rundir)
        log(f"  {name} {conns} conns: connected in {idle['connect_s']:.1f}s, idle RSS "
            f"{idle['rss_idle'] / 2**20:.1f} MiB ({idle['rss_per_conn'] / 1024:.2f} KiB/conn)")
        inst.warm_up(batches[0])
        for batch in batches:
            r = ramp(inst, batch, guesses.get(key + (batch,), 20000.0),
                     common=not random and not flush_delay)
            guesses[key + (batch,)] = max(0.4 * r["max_fps"], 2000.0)
            out.append({"server": name, "conns": conns, **idle, **r, **kind,
                        "aux_rss": sum(rss_bytes(p) for p in server.aux_pids())})
    finally:
        inst.close()
    return out


def run_random_cells(servers: list[str], conns: list[int], random: tuple[int, int],
                     odinws_flush: list[float], rundir: str, guesses: dict,
                     results: dict) -> None:
    """
    Throughput where coalescing cannot help: each connection subscribes to
    random.0 random tokens of random.1 and events rotate over them, so an
    event reaches a few percent of the connections and a burst's events
    mostly different ones. Every server sends each connection only its
    tokens' events. odinws also with each flush window of C{odinws_flush}.
    """
    for n in conns:
        for name in servers:
            # odinws-tick: a fresh instance per mode (its poll_batch is the
            # burst size); odinws's flush windows: turn cells of their own.
            variants = ([((10,), 0.0), ((1,), 0.0)] if name == "odinws-tick" else
                        [((10, 1), 0.0)] + ([((1,), d) for d in odinws_flush]
                                            if name == "odinws" else []))
            for batches, delay in variants:
                log(f"{name}: {n} connections, {random[0]} random tokens of {random[1]}, "
                    f"modes {[MODES[b] for b in batches]}"
                    + (f", flush window {delay * 1e3:g} ms" if delay else ""))
                _cell_into(results, f"{name} {n} random {batches} {delay}",
                           functools.partial(run_cell, name, n, batches, rundir, guesses, random,
                                             delay))


def run_flush_cells(conns: list[int], delays: list[float], rundir: str, guesses: dict,
                    results: dict) -> None:
    """
    odinws, one event per turn, everyone subscribed to everything, with
    each outbound.flush_delay of C{delays} (0 first: the turn cell the
    others are compared with, in the same run).
    """
    for n in conns:
        for delay in delays:
            log(f"odinws: {n} connections, turn, flush window {delay * 1e3:g} ms")
            _cell_into(results, f"odinws {n} flush {delay}",
                       lambda n=n, delay=delay: [
                           dict(c, kind="flush", flush_delay=delay)
                           for c in run_cell("odinws", n, (1,), rundir, guesses, None, delay)])


def _cell_into(results: dict, what: str, run) -> None:
    """Run one cell; its rows go to the results, a failure to the errors."""
    try:
        results["cells"] += run()
    except Exception as e:  # one broken cell must not lose the others
        log(f"  FAILED: {e!r}")
        results["errors"].append(f"{what}: {e!r}")
    finally:
        Proc.stop_all()


def run_slow(name: str, conns: int, rate: float, rundir: str, seconds: float) -> dict:
    """10% of the clients stop reading; the others' rate and the server's RSS over time."""
    cls = SERVERS[name]
    server = cls(rundir, 10) if issubclass(cls, Odinws) else cls(rundir)
    inst = Instance(server, conns, slow_every=10)
    try:
        idle = inst.open(10, rundir)
        inst.warm_up(10)
        inst.set_rate(rate, 10)
        series, t0 = [], time.monotonic()
        while time.monotonic() - t0 < seconds:
            st = inst.window(3.0)
            per_conn = st["fps"] / inst.fast
            series.append({"t": round(time.monotonic() - t0, 1), "fps": st["fps"],
                           "per_conn_ratio": per_conn / rate, "rss": st["rss"],
                           "p99_ms": st["p99_ms"], "open": st["open"], "closed": st["closed"],
                           "starved": st["starved"], "server_cpu": st["server_cpu"]})
            log(f"    slow t={series[-1]['t']:5.1f}s others {st['fps'] / 1e3:8.1f}k/s "
                f"({per_conn / rate:.1%} of offered) RSS {st['rss'] / 2**20:7.1f} MiB "
                f"p99 {st['p99_ms']:.1f} ms closed {st['closed']}")
        inst.drain()
        # odinws: what its slow-client policy did (the peers expose no such counters)
        counters = server.counters() if hasattr(server, "counters") else None
        return {"server": name, "conns": conns, "slow": conns // 10, "rate": rate,
                "offered_fps": rate * inst.fast, "rss_idle": idle["rss_idle"], "series": series,
                "counters": counters}
    finally:
        inst.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--servers",
                    default="odinws,odinws-py,odinws-tick,odinws-sse,cpython-raw,node-ws,py-websockets,nchan,"
                            "centrifugo")
    ap.add_argument("--conns", default="1000,5000,15000")
    ap.add_argument("--classic-servers", default=None,
                    help="servers of the everyone-subscribes-to-everything cells "
                         "(default: --servers)")
    ap.add_argument("--slow-conns", type=int, default=5000)
    ap.add_argument("--slow-seconds", type=float, default=30.0)
    ap.add_argument("--no-slow", action="store_true", help="skip the slow-client scenario")
    ap.add_argument("--no-doc", action="store_true", help="do not rewrite docs/performance.md")
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    ap.add_argument("--random-conns", default="5000",
                    help="connections of the random-tokens cells ('' to skip them)")
    ap.add_argument("--random-tokens", type=int, default=3, help="tokens per connection")
    ap.add_argument("--tokens", type=int, default=100, help="tokens in all (random cells)")
    ap.add_argument("--random-flush-ms", default="2",
                    help="odinws's extra random-tokens turn cells with these flush windows")
    ap.add_argument("--flush-conns", default="1000,5000",
                    help="connections of the flush-window cells ('' to skip them)")
    ap.add_argument("--flush-ms", default="0,1,2,5", help="flush windows (ms) of those cells")
    ap.add_argument("--merge", metavar="RESULTS_JSON",
                    help="also report the cells of servers not run now from an earlier run")
    args = ap.parse_args()
    servers = [s for s in args.servers.split(",") if s]
    conns = [int(c) for c in args.conns.split(",") if c]
    random_conns = [int(c) for c in args.random_conns.split(",") if c]
    flush_conns = [int(c) for c in args.flush_conns.split(",") if c]
    random_flush = [float(m) / 1e3 for m in args.random_flush_ms.split(",") if m]
    flush_delays = [float(m) / 1e3 for m in args.flush_ms.split(",") if m]
    stamp = time.strftime("%Y%m%d-%H%M%S")
    rundir = os.path.join(args.out, stamp)
    os.makedirs(rundir, exist_ok=True)
    results = {"started": stamp, "machine": report.machine(), "cells": [], "slow": [],
               "errors": [], "settings": {"window_s": WINDOW, "settle_s": SETTLE, "ramp": RAMP,
                                          "refine": REFINE, "kept_up": KEPT_UP,
                                          "p99_bound_ms": P99_BOUND}}
    t_start = time.monotonic()
    guesses: dict = {}
    classic = [s for s in (args.classic_servers or args.servers).split(",") if s]
    try:
        for name in classic:
            for n in conns:
                if name == "odinws-sse" and n != SSE_CONNS:
                    continue
                if name == "odinws-py" and n not in PYTHON_LOOP_CONNS:
                    continue
                if name in RANDOM_ONLY:
                    continue
                # odinws's SSE endpoint: burst only.
                variants = {"odinws-sse": [(10,)]}.get(name, [(10, 1)])
                for batches in variants:
                    log(f"{name}: {n} connections, modes {[MODES[b] for b in batches]}")
                    try:
                        results["cells"] += run_cell(name, n, batches, rundir, guesses)
                    except Exception as e:  # one broken cell must not lose the others
                        log(f"  FAILED: {e!r}")
                        results["errors"].append(f"{name} {n} {batches}: {e!r}")
                    finally:
                        Proc.stop_all()
        if random_conns:
            # SSE subscribes by URL to everything: not a random-tokens client.
            run_random_cells([s for s in servers if s != "odinws-sse"], random_conns,
                             (args.random_tokens, args.tokens), random_flush, rundir, guesses,
                             results)
        if flush_conns and "odinws" in servers:
            run_flush_cells(flush_conns, flush_delays, rundir, guesses, results)
        if not args.no_slow:
            # (odinws-py: the slow-client policy is the same Python on both loops.)
            for name in [s for s in servers if s != "odinws-py" and s not in RANDOM_ONLY]:
                base = [c for c in results["cells"] if c["server"] == name and not c.get("kind")
                        and c["conns"] == args.slow_conns and c["mode"] == "burst"]
                if not base or not base[0]["max_fps"]:
                    continue
                # Half the max rate: a load the server sustains, so a drop is
                # the stalled clients' doing, not saturation.
                rate = 0.5 * base[0]["max_fps"] / args.slow_conns
                log(f"{name}: slow clients, {args.slow_conns} connections, {rate:.1f} ev/s")
                try:
                    results["slow"].append(run_slow(name, args.slow_conns, rate, rundir,
                                                    args.slow_seconds))
                except Exception as e:
                    log(f"  FAILED: {e!r}")
                    results["errors"].append(f"{name} slow: {e!r}")
                finally:
                    Proc.stop_all()
    finally:
        Proc.stop_all()
        Odinws.stop_broker()
        results["duration_s"] = round(time.monotonic() - t_start)
        with open(os.path.join(rundir, "results.json"), "w") as f:
            json.dump(results, f, indent=1)
    if args.merge:
        with open(args.merge) as f:
            old = json.load(f)
        # Marked, so that ratios between cells of different runs are not
        # reported; a server's cells of a kind (everyone, random tokens)
        # measured now replace all of its earlier ones of that kind.
        now = {(c["server"], c.get("kind")) for c in results["cells"]}
        results["cells"] += [dict(c, merged_from=old["started"]) for c in old["cells"]
                             if (c["server"], c.get("kind")) not in now]
        results["slow"] += [s for s in old["slow"] if s["server"] not in servers]
        results["merged_from"] = old["started"]
    text = report.render(results)
    print(text)
    with open(os.path.join(rundir, "report.md"), "w") as f:
        f.write(text)
    chart = plot.svg(plot.latency_panels(results))
    with open(os.path.join(rundir, "latency-vs-rate.svg"), "w") as f:
        f.write(chart)
    if not args.no_doc:
        report.write_doc(text)
        with open(report.CHART, "w") as f:
            f.write(chart)
        log("written to docs/performance.md and " + os.path.join(rundir, "results.json"))
    return 1 if results["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
