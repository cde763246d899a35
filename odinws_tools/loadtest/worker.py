"""
One worker process of C{odinws-loadtest}: its share of the connections
(L{odinws_tools.loadtest.client.Conn}) on one asyncio loop, opened on the run's
schedule, a progress message to the parent every second, everything closed
at the end and a final summary sent back.

Connection C{g} (0..N-1) belongs to worker C{g % workers} and starts at
C{start + g / ramp}, so W workers together open the connections in order at
the ramp rate.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import random
import resource
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.connection import wait as wait_pipes
from typing import cast

from odinws_tools.loadtest.client import CLOSED, Conn, ConnectFailed, failure_reason
from odinws_tools.loadtest.stats import Histogram

_IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
CLOSE_WAIT = 5.0


@dataclass
class WorkerSpec:
    """What one worker does; connection C{g} (global index) belongs to worker C{g % workers}."""
    index: int
    workers: int
    address: tuple            # (host, port) to connect to, resolved
    host_header: str
    path: str
    connections: int          # all workers together
    ramp: float               # connections per second, all workers together
    start: float              # epoch seconds: the ramp begins
    hold_end: float           # epoch seconds: end of the completeness window
    close_at: float           # epoch seconds: close everything (after the drain)
    sources: list[str] = field(default_factory=list)
    channels: list[str] = field(default_factory=list)
    random_tokens: int = 0
    tokens: list[str] = field(default_factory=list)
    seed: int = 0
    seq_field: str = "seq"
    connect_timeout: float = 10.0
    max_pending: int = 500


def patterns_for(spec: WorkerSpec, g: int) -> tuple[str, ...]:
    """The subscription of connection C{g}: the channel mix, or C{k} random tokens."""
    if not spec.random_tokens:
        return tuple(spec.channels)
    rng = random.Random(spec.seed * 1_000_003 + g)
    chosen = rng.sample(spec.tokens, min(spec.random_tokens, len(spec.tokens)))
    return tuple(f"odin.token.{tok}.*" for tok in sorted(chosen))


class Worker:
    """Opens this worker's share of connections on schedule, reports every second, closes all."""

    def __init__(self, spec: WorkerSpec, send, loop: asyncio.AbstractEventLoop):
        self.spec = spec
        self.send = send
        self.loop = loop
        self.seq_field = spec.seq_field
        self.hold_end_ms = spec.hold_end * 1000.0
        self.conns: list[Conn] = []
        self.pending = 0
        self.up = 0
        self.lost = 0
        self.failed: dict[str, int] = {}
        self.handshake = Histogram()
        self.subscribe = Histogram()
        self.tick_hist = Histogram()
        self.tick_events = 0
        self.no_seq = 0
        self.malformed = 0
        self.gap_notices: dict[str, int] = {}
        self.gaps: dict[str, int] = {}
        self.duplicates: dict[str, int] = {}
        self.seen: dict[str, dict[int, int]] = {}
        self.stopping = asyncio.Event()
        self._room = asyncio.Event()

    async def _connect(self, g: int) -> None:
        spec = self.spec
        conn = Conn(self, g, patterns_for(spec, g))
        self.conns.append(conn)
        t0 = time.monotonic()
        family = socket.AF_INET6 if ":" in spec.address[0] else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        adopted = False  # the loop owns the socket from create_connection on
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if spec.sources and family == socket.AF_INET:
                # The port is chosen at connect(), per destination: with a
                # plain bind() every source address would be limited to one
                # ephemeral range for all destinations together.
                sock.setsockopt(socket.IPPROTO_IP, _IP_BIND_ADDRESS_NO_PORT, 1)
                sock.bind((spec.sources[g % len(spec.sources)], 0))
            try:
                await asyncio.wait_for(self.loop.sock_connect(sock, spec.address),
                                       spec.connect_timeout)
            except TimeoutError:
                raise ConnectFailed("connect_timeout") from None
            await self.loop.create_connection(lambda: conn, sock=sock)
            adopted = True
            left = spec.connect_timeout - (time.monotonic() - t0)
            try:
                await asyncio.wait_for(asyncio.shield(conn.opened), max(0.001, left))
            except TimeoutError:
                raise ConnectFailed("handshake_timeout") from None
            t1 = time.monotonic()
            self.handshake.add((t1 - t0) * 1000.0)
            try:
                await asyncio.wait_for(asyncio.shield(conn.subscribed), spec.connect_timeout)
            except TimeoutError:
                raise ConnectFailed("subscribe_timeout") from None
            self.subscribe.add((time.monotonic() - t1) * 1000.0)
            self.up += 1
        except Exception as e:  # noqa: BLE001 - every failure is counted by its reason
            reason = failure_reason(e)
            self.failed[reason] = self.failed.get(reason, 0) + 1
            if not adopted:
                sock.close()
            if conn.transport is not None:
                conn.state = CLOSED
                conn.transport.abort()
        finally:
            self.pending -= 1
            self._room.set()

    async def ramp(self) -> None:
        spec = self.spec
        tasks = set()
        for g in range(spec.index, spec.connections, spec.workers):
            delay = spec.start + g / spec.ramp - time.time()
            if delay > 0 and await self._stopped_within(delay):
                break
            while self.pending >= spec.max_pending:
                self._room.clear()
                await self._room.wait()
            if self.stopping.is_set() or time.time() >= spec.hold_end:
                break
            self.pending += 1
            task = self.loop.create_task(self._connect(g))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.wait(tasks)

    async def _stopped_within(self, seconds: float) -> bool:
        try:
            await asyncio.wait_for(self.stopping.wait(), seconds)
            return True
        except TimeoutError:
            return False

    async def ticks(self) -> None:
        """One progress message per second, on the run's common second boundaries."""
        i = 0
        cpu0 = _cpu()
        while True:
            i += 1
            await asyncio.sleep(max(0.0, self.spec.start + i - time.time()))
            cpu = _cpu()
            hist, self.tick_hist = self.tick_hist, Histogram()
            events, self.tick_events = self.tick_events, 0
            self.send({"kind": "tick", "worker": self.spec.index, "i": i,
                       "up": self.up - self.lost, "pending": self.pending,
                       "failed": sum(self.failed.values()), "lost": self.lost, "events": events,
                       "hist": hist.to_wire(),
                       "cpu": cpu - cpu0})
            cpu0 = cpu

    async def close_all(self) -> None:
        for conn in self.conns:
            conn.close()
        waiting = [c.ended for c in self.conns if not c.ended.done()]
        if waiting:
            await asyncio.wait(waiting, timeout=CLOSE_WAIT)
        for conn in self.conns:
            if not conn.ended.done() and conn.transport is not None:
                conn.transport.abort()

    def final(self) -> dict:
        lost: dict[str, int] = {}
        for c in self.conns:
            if c.lost:
                lost[c.lost] = lost.get(c.lost, 0) + 1
        return {"kind": "final", "worker": self.spec.index, "failed": self.failed, "lost": lost,
                "handshake": self.handshake.to_wire(), "subscribe": self.subscribe.to_wire(),
                "no_seq": self.no_seq, "malformed": self.malformed, "gaps": self.gaps,
                "gap_notices": self.gap_notices,
                "duplicates": self.duplicates,
                "seen": self.seen, "cpu": _cpu(),
                "max_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                "conns": [(c.g, c.t_sub_ms, c.in_window, c.events, c.seqs.gaps,
                           c.seqs.duplicates) for c in self.conns if c.t_sub_ms is not None]}


def _cpu() -> float:
    u = resource.getrusage(resource.RUSAGE_SELF)
    return u.ru_utime + u.ru_stime


def raise_file_limit() -> int:
    """Raise RLIMIT_NOFILE to the hard limit; return the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


async def _run(spec: WorkerSpec, pipe) -> None:
    loop = asyncio.get_running_loop()
    worker = Worker(spec, pipe.send, loop)

    def on_parent() -> None:
        # "stop" from the parent, or its end of the pipe closed: wind down.
        try:
            pipe.recv()
        except (EOFError, OSError):
            pass
        loop.remove_reader(pipe.fileno())
        worker.stopping.set()

    loop.add_reader(pipe.fileno(), on_parent)
    ticker = loop.create_task(worker.ticks())
    ramp = loop.create_task(worker.ramp())
    await worker._stopped_within(max(0.0, spec.close_at - time.time()))
    worker.stopping.set()
    await ramp
    await worker.close_all()
    ticker.cancel()
    pipe.send(worker.final())


class PipeWorkers:
    """
    The worker processes of one run (multiprocessing, spawned), read through
    their pipes; the same interface as
    L{odinws_tools.loadtest.nativeclient.NativeWorkers}.
    """

    def __init__(self, specs: list[WorkerSpec]):
        ctx = multiprocessing.get_context("spawn")
        self.procs = []
        self.pipes: dict[Connection, int] = {}
        for spec in specs:
            mine, theirs = ctx.Pipe()
            proc = ctx.Process(target=worker_main, args=(spec, theirs),
                               name=f"odinws-loadtest-{spec.index}", daemon=True)
            proc.start()
            theirs.close()
            self.procs.append(proc)
            self.pipes[mine] = spec.index

    def messages(self, timeout: float) -> Iterator[tuple[int, dict | None]]:
        """(worker, message) as they come, (worker, None) when one ended."""
        # wait() returns some of the objects it was given: these pipes.
        for pipe in cast("list[Connection]", wait_pipes(list(self.pipes), timeout=timeout)):
            try:
                msg = pipe.recv()
            except (EOFError, OSError):
                yield self.pipes.pop(pipe), None
                continue
            yield (self.pipes[pipe] if msg["kind"] == "tick" else self.pipes.pop(pipe)), msg

    def stop(self) -> None:
        """Ask every worker to close its connections and report now."""
        for pipe in self.pipes:
            try:
                pipe.send("stop")
            except (OSError, ValueError):
                pass

    def reap(self, grace: float) -> None:
        """Wait at most C{grace} s for each, then terminate (and kill) it."""
        for proc in self.procs:
            proc.join(grace)
            if proc.is_alive():
                proc.terminate()
                proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join(5)


def worker_main(spec: WorkerSpec, pipe) -> None:
    """Entry point of a worker process (multiprocessing target)."""
    import signal
    # Ctrl-C goes to the whole process group: the parent decides when to stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise_file_limit()
    asyncio.run(_run(spec, pipe))
