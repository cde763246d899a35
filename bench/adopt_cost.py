"""
What adopting one connection costs the parent and the shard, counted, not
timed (issue 22, docs/performance.md "Reconnection storms"): a parent
process (the real L{Dispatcher}, L{Admission}, L{ShardHandle} and
L{ShardLink}, listening on loopback) and a shard process (the real
L{Shard}, its Kafka intake not started) joined by a Unix socketpair as the
supervisor joins them; this script's clients connect one after the other,
upgrade, send one subscribe and read its C{subscribed} reply, and stay
open until the end. What it leaves out: the kernel (callgrind counts user
space only), Kafka, the shard's periodic Stats.

    python bench/adopt_cost.py                     # function calls per connection (cProfile)
    python bench/adopt_cost.py --callgrind         # instructions per connection, each process
    python bench/adopt_cost.py --profile shard     # the shard's top functions (cProfile)

Under callgrind each process runs twice (CALLGRIND_RUNS connections) and
the difference is divided by theirs, so start-up cancels out. Each
process also reports its garbage collections in the measured window
(per generation) and the seconds they took.
"""

from __future__ import annotations

import argparse
import base64
import gc
import json
import os
import re
import socket
import subprocess
import sys
import time

HERE = os.path.abspath(__file__)
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, ROOT)

#: The settings both processes run with: the per-IP limits lifted (every
#: client comes from 127.0.0.1), the rest the defaults.
OVERRIDES = {
    "limits.connection_rate_per_ip": 100000,
    "limits.connection_burst_per_ip": 100000,
    "limits.max_connections_per_ip": 100000,
    "limits.max_connections": 100000,
    "limits.max_connections_per_shard": 100000,
    "listen.max_heads_per_ip": 100000,
    "guard.cpu_threshold": 0,
    "guard.memory_threshold": 0,
}
SUBSCRIBE = b'{"type":"subscribe","channels":["odin.token.1000.trade"],"id":"s"}'
#: Connections of the short and the long run under callgrind.
CALLGRIND_RUNS = (50, 150)


def settings():
    from odin_ws.common import config as configmod
    from odin_ws.common.settings import Settings
    return Settings.from_config(configmod.load(None, environ={}).replace(**OVERRIDES))


def quiet_logging(log) -> None:
    """The node's own log observer (format, level, flood guard), writing to /dev/null."""
    from twisted.logger import globalLogBeginner

    from odin_ws.common.logs import make_observer
    out = open(os.devnull, "w")
    globalLogBeginner.beginLoggingTo([make_observer(log.format, log.level, out=out)],
                                     redirectStandardIO=False)


def parent_role(fd: int) -> tuple:
    """The parent's pieces, as odin_ws/tap.py wires them, for one shard."""
    from twisted.internet import reactor
    from twisted.internet.protocol import Factory

    from odin_ws.parent.admission import Admission
    from odin_ws.parent.dispatcher import Dispatcher
    from odin_ws.parent.hub import Hub
    from odin_ws.parent.scrape import MetricsScrape
    from odin_ws.parent.shardhandle import ShardHandle, ShardLink

    s = settings()
    quiet_logging(s.log)
    handle = ShardHandle(0, None, reactor, s.supervisor)
    hub = Hub(reactor, s.hub.max_event_bytes, s.hub.max_queue_batches)
    reactor.adoptStreamConnection(fd, socket.AF_UNIX,
                                  Factory.forProtocol(lambda: ShardLink(handle, hub)))
    os.close(fd)
    shards = lambda: [handle]  # noqa: E731
    admission = Admission(reactor.seconds, None, s, shards)
    dispatcher = Dispatcher(reactor, s, shards, health=lambda: (200, {}), admission=admission,
                            scrape=MetricsScrape(reactor, shards, s))
    port = reactor.listenTCP(0, dispatcher, backlog=1024, interface="127.0.0.1")
    ready = handle.when_registered()
    ready.addCallback(lambda _: print(json.dumps({"port": port.getHost().port}), flush=True))
    return ()


def shard_role(fd: int) -> tuple:
    """A shard as its process builds it, its control channel on C{fd}; no Kafka."""
    from twisted.internet import reactor
    from twisted.internet.protocol import Factory

    from odin_ws.shard.service import ParentLink, Shard

    s = settings()
    quiet_logging(s.log)
    shard = Shard(reactor, s, 0, control_fd=None)
    reactor.adoptStreamConnection(fd, socket.AF_UNIX,
                                  Factory.forProtocol(lambda: ParentLink(shard)))
    os.close(fd)
    return (shard,)


def serve(role: str, fd: int, profile: str | None) -> None:
    """Run C{role} until its stdin says C{done}; print the profile's counts."""
    from twisted.internet import epollreactor
    epollreactor.install()
    from twisted.internet import reactor, stdio
    from twisted.protocols.basic import LineReceiver

    keep = (parent_role if role == "parent" else shard_role)(fd)
    profiler = None
    if profile is not None:
        import cProfile
        profiler = cProfile.Profile()

    class Control(LineReceiver):
        delimiter = b"\n"

        def lineReceived(self, line: bytes) -> None:
            if line == b"start":
                gc_time.clear()
                self.gc_before = [g["collections"] for g in gc.get_stats()]
                if profiler is not None:
                    profiler.enable()
            elif line == b"done":
                report: dict = {"role": role, "gc_collections": [
                    g["collections"] - b for g, b in zip(gc.get_stats(), self.gc_before)],
                    "gc_seconds": round(sum(gc_time), 4)}
                if profiler is not None:
                    profiler.disable()
                    report.update(profile_counts(profiler, profile))
                print(json.dumps(report), flush=True)
                reactor.stop()

    stdio.StandardIO(Control())
    gc_time = watch_gc()
    reactor.run()
    del keep


def watch_gc() -> list[float]:
    """Seconds each garbage collection took from now on (the list is cleared at start)."""
    spent: list[float] = []
    began = [0.0]

    def callback(phase: str, info: dict) -> None:
        if phase == "start":
            began[0] = time.perf_counter()
        else:
            spent.append(time.perf_counter() - began[0])
    gc.callbacks.append(callback)
    return spent


def profile_counts(profiler, path: str) -> dict:
    """Total calls, and the profile saved to C{path} for L{top}."""
    import pstats
    stats = pstats.Stats(profiler)
    stats.dump_stats(path)
    return {"calls": stats.total_calls, "primitive_calls": stats.prim_calls}


def upgrade_request(port: int) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n").encode()


def masked_text(payload: bytes) -> bytes:
    mask = os.urandom(4)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    assert len(payload) < 126
    return bytes([0x81, 0x80 | len(payload)]) + mask + body


def read_until(sock: socket.socket, done) -> bytes:
    data = b""
    while not done(data):
        chunk = sock.recv(4096)
        if not chunk:
            raise RuntimeError(f"connection closed after {data[:200]!r}")
        data += chunk
    return data


def client(port: int) -> socket.socket:
    """One client: upgrade, subscribe, its C{subscribed} reply; left open."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    sock.sendall(upgrade_request(port))
    head = read_until(sock, lambda d: b"\r\n\r\n" in d)
    if not head.startswith(b"HTTP/1.1 101"):
        raise RuntimeError(f"no upgrade: {head[:200]!r}")
    rest = head.split(b"\r\n\r\n", 1)[1]
    sock.sendall(masked_text(SUBSCRIBE))
    reply = rest + read_until(sock, lambda d: b'"subscribed"' in rest + d)
    if b'"subscribed"' not in reply:
        raise RuntimeError(f"no subscribed reply: {reply[:200]!r}")
    return sock


def run(connections: int, profile_dir: str | None = None,
        valgrind: bool = False) -> dict:
    """
    One parent and one shard process, C{connections} clients one after the
    other; each process's report (cProfile counts when C{profile_dir}) and
    callgrind's instructions when C{valgrind}.
    """
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    procs = {}
    for role, end in (("shard", b), ("parent", a)):
        cmd = [sys.executable, HERE, "--role", role, "--fd", str(end.fileno())]
        if profile_dir is not None:
            cmd += ["--profile-out", os.path.join(profile_dir, f"{role}.prof")]
        if valgrind:
            cmd = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", *cmd]
        procs[role] = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, pass_fds=(end.fileno(),),
                                       cwd=ROOT)
        end.close()
    try:
        line = procs["parent"].stdout.readline()  # type: ignore[union-attr]
        if not line:
            raise RuntimeError("parent: " + procs["parent"].stderr.read().decode()[-2000:])  # type: ignore[union-attr]
        port = json.loads(line)["port"]
        # A first connection warms both processes (imports, first-use caches).
        socks = [client(port)]
        for proc in procs.values():
            proc.stdin.write(b"start\n")  # type: ignore[union-attr]
            proc.stdin.flush()  # type: ignore[union-attr]
        time.sleep(0.5)
        started = time.monotonic()
        socks += [client(port) for _ in range(connections)]
        wall = time.monotonic() - started
        report: dict = {"connections": connections, "wall_s": round(wall, 2)}
        for role, proc in procs.items():
            proc.stdin.write(b"done\n")  # type: ignore[union-attr]
            proc.stdin.flush()  # type: ignore[union-attr]
            out, err = proc.communicate(timeout=600)
            report[role] = json.loads(out.decode().strip().splitlines()[-1])
            found = re.search(r"Collected : (\d+)", err.decode())
            if found:
                report[role]["instructions"] = int(found.group(1))
        for sock in socks:
            sock.close()
        return report
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def top(path: str, n: int) -> None:
    import pstats
    stats = pstats.Stats(path)
    stats.sort_stats("tottime").print_stats(n)
    stats.sort_stats("cumulative").print_stats(n)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=300)
    parser.add_argument("--callgrind", action="store_true",
                        help="instructions per connection, short and long runs")
    parser.add_argument("--profile", choices=("parent", "shard"),
                        help="print that process's top functions")
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--role", choices=("parent", "shard"), help=argparse.SUPPRESS)
    parser.add_argument("--fd", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--profile-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role:
        serve(args.role, args.fd, args.profile_out)
        return
    if args.callgrind:
        short, long = (run(n, valgrind=True) for n in CALLGRIND_RUNS)
        out = {"connections": CALLGRIND_RUNS}
        for role in ("parent", "shard"):
            out[f"{role}_instructions_per_connection"] = round(
                (long[role]["instructions"] - short[role]["instructions"])
                / (CALLGRIND_RUNS[1] - CALLGRIND_RUNS[0]))
        print(json.dumps(out), flush=True)
        return
    workdir = os.path.join(ROOT, "bench", ".work", "adopt_cost")
    os.makedirs(workdir, exist_ok=True)
    report = run(args.connections, profile_dir=workdir)
    for role in ("parent", "shard"):
        report[f"{role}_calls_per_connection"] = round(
            report[role]["calls"] / args.connections, 1)
    print(json.dumps(report), flush=True)
    if args.profile:
        top(os.path.join(workdir, f"{args.profile}.prof"), args.top)


if __name__ == "__main__":
    main()
