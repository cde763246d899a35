"""
odinws-loadtest: open many WebSocket connections to an odinws node, hold them
subscribed for a while, and report what they got.

C{--connections N} are opened at C{--ramp R/s} by C{--workers W} processes
(each an asyncio loop of raw-socket clients, L{odinws_tools.loadtest.client}), spread
over loopback source addresses, then held for C{--duration} seconds and
C{--drain} more, then closed. Measured: connection failures by reason,
handshake time, delivered events/s, end-to-end latency from the events'
Kafka timestamps, gaps and duplicates per channel (the events' C{seq}
field), events missing per connection (L{odinws_tools.loadtest.stats.Completeness})
and the node's C{/metrics} before and at the end of the hold. A progress
line goes to stderr every second; C{report.json} and C{report.html} to
C{--report}. Exit status: 0 when every connection opened and stayed up and
no event was missing, duplicated or out of order; 1 otherwise; 2 for a
usage error.

Only loopback targets unless C{--allow-remote}; every run is bounded by its
connection count and duration and stops by itself.
"""

from __future__ import annotations

import argparse
import ipaddress
import math
import os
import signal
import socket
import sys
import threading
import time
import urllib.request
from urllib.parse import urlsplit

from odinws_tools.loadtest import nativeclient
from odinws_tools.loadtest.report import build_report, write_report
from odinws_tools.loadtest.stats import Histogram, key_series
from odinws_tools.loadtest.worker import CLOSE_WAIT, PipeWorkers, WorkerSpec, raise_file_limit
from odinws_tools.simulate import token_ids

MAX_CONNECTIONS = 200_000
MAX_DURATION = 24 * 3600.0
#: Ephemeral ports usable per source address, less a margin for other users.
PORTS_PER_ADDRESS_SHARE = 0.8
#: File descriptors a worker keeps for itself (pipes, epoll, libraries).
FD_RESERVE = 64
STARTUP_MARGIN = 1.5
EXIT_GRACE = 20.0


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="odinws-loadtest",
        description="Open many subscribed WebSocket connections to an odinws node for a "
                    "bounded time; report failures, delivery rate, latency and lost or "
                    "duplicated events. Loopback targets only unless --allow-remote.")
    p.add_argument("--url", default="ws://127.0.0.1:3005/ws", help="WebSocket URL (ws:// only)")
    p.add_argument("--connections", type=int, default=100, help="connections to open")
    p.add_argument("--ramp", default="500/s", help="connections opened per second (R or R/s)")
    p.add_argument("--duration", type=float, default=30.0,
                   help="seconds to hold after the ramp (the completeness window ends here)")
    p.add_argument("--drain", type=float, default=3.0, help="seconds to keep reading after "
                   "the hold, for events produced before its end")
    mix = p.add_mutually_exclusive_group()
    mix.add_argument("--channels", default=None,
                     help="comma-separated channels every connection subscribes to "
                          "(default odin.token.*.*)")
    mix.add_argument("--random-tokens", type=int, default=0, metavar="K",
                     help="each connection subscribes to K random tokens (odin.token.<tok>.*)")
    p.add_argument("--tokens", type=int, default=100,
                   help="token ids TOK001.. to draw from with --random-tokens (as odinws-simulate)")
    p.add_argument("--workers", type=int, default=0,
                   help="worker processes (0: enough for the file limit; python: at least "
                        "one per CPU)")
    p.add_argument("--client", choices=("python", "native"), default="python",
                   help="python: asyncio workers; native: odinws-loadclient (C, built with "
                        "the C compiler on first use), the same checks at a fraction of the CPU")
    p.add_argument("--native-binary", default="",
                   help="a built odinws-loadclient (default: build it into ~/.cache/odinws)")
    p.add_argument("--source-addresses", default="",
                   help="comma-separated local addresses to connect from (default: as many "
                        "of 127.0.0.1, 127.0.0.2, ... as the ephemeral port range needs)")
    p.add_argument("--connect-timeout", type=float, default=10.0,
                   help="seconds each of connect, upgrade and subscribe may take")
    p.add_argument("--max-pending", type=int, default=500,
                   help="connections being opened at once per worker")
    p.add_argument("--seq-field", default="seq", help="per-channel sequence field of the events")
    p.add_argument("--metrics-url", default="", help="server metrics (default: "
                   "http://<host>:<port>/metrics of --url; 'none' to skip)")
    p.add_argument("--report", default="", help="directory for report.json and report.html")
    p.add_argument("--seed", type=int, default=1, help="seed of --random-tokens")
    p.add_argument("--allow-remote", action="store_true",
                   help="allow a non-loopback target (only against servers you run)")
    p.add_argument("--quiet", action="store_true", help="no progress line")
    args = p.parse_args(argv)
    try:
        _check(args)
    except ValueError as e:
        p.error(str(e))
    return args


def _check(args: argparse.Namespace) -> None:
    url = urlsplit(args.url)
    if url.scheme != "ws" or not url.hostname:
        raise ValueError("--url: expected ws://host:port/path (wss is not supported)")
    args.host, args.port = url.hostname, url.port or 80
    args.path = (url.path or "/") + (f"?{url.query}" if url.query else "")
    if not 1 <= args.connections <= MAX_CONNECTIONS:
        raise ValueError(f"--connections: 1 to {MAX_CONNECTIONS}")
    rate = args.ramp.removesuffix("/s")
    try:
        args.ramp_rate = float(rate)
    except ValueError:
        raise ValueError("--ramp: a number of connections per second, e.g. 500/s") from None
    if not 0 < args.ramp_rate < math.inf:
        raise ValueError("--ramp: must be positive")
    if not 0 < args.duration <= MAX_DURATION:
        raise ValueError(f"--duration: more than 0, at most {MAX_DURATION:g} seconds")
    if not 0 <= args.drain <= 600 or not 0 < args.connect_timeout <= 600:
        raise ValueError("--drain and --connect-timeout: 0 to 600 seconds")
    if args.random_tokens < 0 or args.tokens < 1 or args.workers < 0 or args.max_pending < 1:
        raise ValueError("--random-tokens, --tokens, --workers, --max-pending: not negative")
    args.channel_list = [c.strip() for c in (args.channels or "odin.token.*.*").split(",")
                         if c.strip()]
    if not args.channel_list:
        raise ValueError("--channels: at least one channel")
    try:
        infos = socket.getaddrinfo(args.host, args.port, type=socket.SOCK_STREAM)
    except OSError as e:
        raise ValueError(f"--url: cannot resolve {args.host}: {e}") from None
    args.address = infos[0][4][:2]
    remote = [i[4][0] for i in infos if not ipaddress.ip_address(i[4][0]).is_loopback]
    if remote and not args.allow_remote:
        raise ValueError(f"--url: {args.host} is not a loopback address ({remote[0]}); "
                         "pass --allow-remote to load a server you run elsewhere")
    sources = [s.strip() for s in args.source_addresses.split(",") if s.strip()]
    for s in sources:
        try:
            loopback = ipaddress.ip_address(s).is_loopback
        except ValueError:
            raise ValueError(f"--source-addresses: {s!r} is not an IP address") from None
        if not loopback and not args.allow_remote:
            raise ValueError(f"--source-addresses: {s} is not a loopback address")
    args.sources = sources or _default_sources(args.connections, args.address[0])
    if args.client == "native" and (args.random_tokens or ":" in args.address[0]):
        raise ValueError("--client native: IPv4 targets and --channels only "
                         "(no --random-tokens)")
    args.workers = _plan_workers(args.connections, args.workers, args.client == "native")


def _ephemeral_ports() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low, high = map(int, f.read().split())
            return high - low + 1
    except (OSError, ValueError):
        return 28232


def _default_sources(connections: int, target: str) -> list[str]:
    """As many of 127.0.0.1, 127.0.0.2, ... as the port range needs (IPv4 loopback only)."""
    if not target.startswith("127."):
        return []
    per_address = int(_ephemeral_ports() * PORTS_PER_ADDRESS_SHARE)
    count = min(250, math.ceil(connections / per_address))
    return [f"127.0.0.{i}" for i in range(1, count + 1)]


def _plan_workers(connections: int, wanted: int, native: bool = False) -> int:
    """
    Enough workers for the file limit (each raises its own); Python workers
    also at least one per CPU (up to one per 1,000 connections).
    """
    raise_file_limit()
    import resource
    per_worker = max(1, resource.getrlimit(resource.RLIMIT_NOFILE)[0] - FD_RESERVE)
    needed = math.ceil(connections / per_worker)
    if wanted:
        if wanted < needed:
            raise ValueError(f"--workers: {wanted} cannot hold {connections} connections "
                             f"with a file limit of {per_worker + FD_RESERVE}; use {needed}+")
        return min(wanted, connections)
    if native:
        return needed
    return max(needed, min(os.cpu_count() or 1, math.ceil(connections / 1000)))


def _scrape(url: str) -> tuple[dict | None, str | None]:
    if not url:
        return None, None
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return key_series(r.read().decode("utf-8", "replace")), None
    except Exception as e:  # noqa: BLE001 - the report says why metrics are missing
        return None, f"{type(e).__name__}: {e}"


class Run:
    """The workers of one run, their progress messages and their final summaries."""

    def __init__(self, args: argparse.Namespace, out=sys.stderr):
        self.args = args
        self.out = out
        self.interrupted = threading.Event()
        self.interrupted_at: float | None = None
        now = time.time()
        self.start = now + STARTUP_MARGIN + 0.2 * args.workers
        self.ramp_seconds = args.connections / args.ramp_rate
        self.hold_start = self.start + self.ramp_seconds
        self.hold_end = self.hold_start + args.duration
        self.close_at = self.hold_end + args.drain
        self.ticks: dict[int, dict[int, dict]] = {}
        #: Workers still sending ticks (a dead one must not hold up the progress line).
        self.live: set[int] = set(range(args.workers))
        self.timeline: list[dict] = []
        self.finals: list[dict] = []
        self.metrics_url = "" if args.metrics_url == "none" else (
            args.metrics_url or f"http://{args.host}:{args.port}/metrics")
        self.metrics: dict = {}

    def interrupt(self) -> None:
        """Stop early (signal handler): the completeness window ends now."""
        if self.interrupted_at is None:
            self.interrupted_at = time.time()
        self.interrupted.set()

    @property
    def window_end(self) -> float:
        """End of the completeness window (epoch seconds)."""
        return min(self.hold_end, self.interrupted_at or self.hold_end)

    def spec(self, index: int) -> WorkerSpec:
        a = self.args
        return WorkerSpec(
            index=index, workers=a.workers, address=a.address,
            host_header=f"{a.host}:{a.port}", path=a.path, connections=a.connections,
            ramp=a.ramp_rate, start=self.start, hold_end=self.hold_end, close_at=self.close_at,
            sources=a.sources, channels=a.channel_list, random_tokens=a.random_tokens,
            tokens=token_ids(a.tokens), seed=a.seed,
            seq_field=a.seq_field, connect_timeout=a.connect_timeout,
            max_pending=a.max_pending)

    def execute(self) -> None:
        self.metrics["before"], self.metrics["before_error"] = _scrape(self.metrics_url)
        scraper = threading.Thread(target=self._scrape_at_hold_end, daemon=True)
        scraper.start()
        specs = [self.spec(i) for i in range(self.args.workers)]
        workers: PipeWorkers | nativeclient.NativeWorkers = (
            nativeclient.NativeWorkers(self.args.native_binary, specs)
            if self.args.client == "native" else PipeWorkers(specs))
        deadline = self.close_at + CLOSE_WAIT + EXIT_GRACE
        try:
            self._collect(workers, deadline)
            self.flush()
        finally:
            workers.reap(max(0.1, deadline - time.time()))
        scraper.join(15)

    def _scrape_at_hold_end(self) -> None:
        while not self.interrupted.is_set() and time.time() < self.hold_end:
            self.interrupted.wait(min(0.5, max(0.01, self.hold_end - time.time())))
        self.metrics["hold_end"], self.metrics["hold_end_error"] = _scrape(self.metrics_url)

    def _collect(self, workers: PipeWorkers | nativeclient.NativeWorkers,
                 deadline: float) -> None:
        """Ticks and finals until every worker reported (or ended), or the deadline."""
        stop_sent = False
        running = set(range(self.args.workers))
        while running and time.time() < deadline:
            if self.interrupted.is_set() and not stop_sent:
                workers.stop()
                stop_sent = True
            for i, msg in workers.messages(timeout=0.25):
                if msg is None or msg["kind"] != "tick":
                    running.discard(i)
                    self.live.discard(i)
                if msg is None:
                    continue
                if msg["kind"] == "tick":
                    self._tick(msg)
                else:
                    self.finals.append(msg)

    def _tick(self, msg: dict) -> None:
        per_worker = self.ticks.setdefault(msg["i"], {})
        per_worker[msg["worker"]] = msg
        for i in sorted(self.ticks):
            if i <= msg["i"] and self.live <= set(self.ticks[i]):
                self._row(self.ticks.pop(i))

    def flush(self) -> None:
        """Rows for seconds some worker never reported (it died or was stopped)."""
        for i in sorted(self.ticks):
            self._row(self.ticks.pop(i))

    def _row(self, per_worker: dict[int, dict]) -> None:
        hist = Histogram()
        for m in per_worker.values():
            hist.merge(Histogram.from_wire(m["hist"]))
        t = next(iter(per_worker.values()))["i"]
        row = {"t": t, "up": sum(m["up"] for m in per_worker.values()),
               "pending": sum(m["pending"] for m in per_worker.values()),
               "failed": sum(m["failed"] for m in per_worker.values()),
               "lost": sum(m["lost"] for m in per_worker.values()),
               "events": hist.n, "p50": hist.percentile(50), "p99": hist.percentile(99),
               "max": hist.max if hist.n else None,
               "client_cpu": sum(m["cpu"] for m in per_worker.values()),
               "phase": self.phase(t), "hist": hist.to_wire()}
        self.timeline.append(row)
        if not self.args.quiet:
            self.out.write(_progress(row, self.args.connections) + "\n")
            self.out.flush()

    def phase(self, t: int) -> str:
        """ramp, hold, drain or close: what the second ending at start + t belonged to."""
        at = self.start + t
        if at <= self.hold_start + 1e-6:
            return "ramp"
        if at <= self.hold_end + 1e-6:
            return "hold"
        return "drain" if at <= self.close_at + 1e-6 else "close"


def _progress(row: dict, total: int) -> str:
    p99 = "-" if row["p99"] is None else f"{row['p99']:.0f}ms"
    return (f"[{row['t']:4d}s {row['phase']:5s}] up {row['up']}/{total}  opening {row['pending']}  "
            f"failed {row['failed']}  lost {row['lost']}  events {row['events']}/s  "
            f"p99 {p99}  client cpu {row['client_cpu'] * 100:.0f}%")


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    if args.client == "native" and not args.native_binary:
        try:
            # Before the run's schedule is set: a first build takes seconds.
            args.native_binary = nativeclient.build()
        except nativeclient.NativeUnavailable as e:
            sys.stderr.write(f"odinws-loadtest: the native client: {e}\n")
            return 2
    run = Run(args)
    previous = {s: signal.signal(s, lambda *_: run.interrupt())
                for s in (signal.SIGINT, signal.SIGTERM)}
    started = time.time()
    sys.stderr.write(
        f"odinws-loadtest: {args.connections} connections to {args.url} at "
        f"{args.ramp_rate:g}/s from {args.workers} {args.client} worker(s) and {len(args.sources) or 1} "
        f"source address(es); hold {args.duration:g}s, drain {args.drain:g}s\n")
    try:
        run.execute()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    report = build_report(args, run, time.time() - started)
    if args.report:
        paths = write_report(report, args.report)
        sys.stderr.write(f"odinws-loadtest: report written to {', '.join(paths)}\n")
    print(report["summary_text"])
    return 0 if report["verdict"]["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
