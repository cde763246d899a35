"""
The native workers of C{odinws-loadtest --client native}: C{odinws-loadclient}
(C{loadclient.c} beside this module), built from source with the C compiler
on first use, one process per worker.

Why: a Python worker spends 22-30 µs of CPU per event it reads (see
docs/performance.md, "Capacity"), so at 40,000 connections with every event
to all of them the client, not the server, used the machine's two cores.
The native worker does the same checks (L{odinws_tools.loadtest.client}'s
handshake, subscribe, latency, per-channel sequence and completeness
counts) in one epoll loop, and reports in the shapes a Python worker sends
over its pipe, so L{odinws_tools.loadtest.run.Run} and the report take
either.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import subprocess
import tempfile
import threading
from collections.abc import Iterator

from odinws_tools.loadtest.worker import WorkerSpec

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCES = tuple(os.path.join(HERE, name)
                for name in ("loadclient.c", "loadclient_checks.h", "wsframe.h"))
#: Channels per subscribe message (as L{odinws_tools.loadtest.client}).
SUBSCRIBE_CHUNK = 100


class NativeUnavailable(Exception):
    """The native client could not be built (no compiler, or it failed)."""


def _digest() -> str:
    h = hashlib.sha256()
    for path in SOURCES:
        with open(path, "rb") as f:
            h.update(f.read())
    return h.hexdigest()[:12]


def default_path() -> str:
    """Where the build goes: a per-user cache, named by the sources' digest."""
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "odinws", f"odinws-loadclient-{_digest()}")


def build(path: str | None = None) -> str:
    """
    Compile C{loadclient.c} to C{path} (default L{default_path}) unless it is
    there already; return the path. C{$CC} picks the compiler (default C{cc}).
    """
    path = path or default_path()
    if os.path.exists(path) and all(os.path.getmtime(path) >= os.path.getmtime(s)
                                    for s in SOURCES):
        return path
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".loadclient-", dir=os.path.dirname(path) or ".")
    os.close(fd)
    cmd = [os.environ.get("CC", "cc"), "-O2", "-std=gnu11", "-Wall", "-o", tmp, SOURCES[0], "-lm"]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as e:
        os.unlink(tmp)
        raise NativeUnavailable(f"cannot run {cmd[0]}: {e}") from None
    if done.returncode:
        os.unlink(tmp)
        raise NativeUnavailable(f"{' '.join(cmd)} failed:\n{done.stderr.strip()}")
    os.replace(tmp, path)
    return path


def subscribe_messages(channels: list[str]) -> list[str]:
    """The subscribe messages of one connection, chunked as the Python client does."""
    return [json.dumps({"type": "subscribe", "channels": channels[i:i + SUBSCRIBE_CHUNK],
                        "id": n})
            for n, i in enumerate(range(0, len(channels), SUBSCRIBE_CHUNK))]


def command(binary: str, spec: WorkerSpec) -> list[str]:
    """The command line of worker C{spec.index}."""
    host, port = spec.address[:2]
    cmd = [binary, "--host", host, "--port", str(port), "--path", spec.path,
           "--host-header", spec.host_header, "--index", str(spec.index),
           "--workers", str(spec.workers), "--connections", str(spec.connections),
           "--ramp", repr(spec.ramp), "--start", repr(spec.start),
           "--hold-end", repr(spec.hold_end), "--close-at", repr(spec.close_at),
           "--seq-field", spec.seq_field, "--connect-timeout", repr(spec.connect_timeout),
           "--max-pending", str(spec.max_pending)]
    for source in spec.sources:
        cmd += ["--source", source]
    for message in subscribe_messages(spec.channels):
        cmd += ["--subscribe", message]
    return cmd


def _histogram(wire: list) -> tuple:
    counts, n, total, peak = wire
    return ({int(k): v for k, v in counts.items()}, n, total, peak)


def decode(line: str) -> dict:
    """One line of a native worker as the message a Python worker would send."""
    msg = json.loads(line)
    if msg["kind"] == "tick":
        msg["hist"] = _histogram(msg["hist"])
    else:
        msg["handshake"] = _histogram(msg["handshake"])
        msg["subscribe"] = _histogram(msg["subscribe"])
        msg["seen"] = {ch: {int(s): ts for s, ts in seqs.items()}
                       for ch, seqs in msg["seen"].items()}
        msg["conns"] = [tuple(c) for c in msg["conns"]]
    return msg


class NativeWorkers:
    """The worker processes of one run, their stdout read by one thread each."""

    def __init__(self, binary: str, specs: list[WorkerSpec]):
        self.procs = [subprocess.Popen(command(binary, s), stdin=subprocess.PIPE,
                                       stdout=subprocess.PIPE, text=True) for s in specs]
        self._lines: queue.Queue = queue.Queue()
        for i, proc in enumerate(self.procs):
            threading.Thread(target=self._read, args=(i, proc), daemon=True).start()

    def _read(self, i: int, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self._lines.put((i, line))
        self._lines.put((i, None))

    def messages(self, timeout: float) -> Iterator[tuple[int, dict | None]]:
        """(worker, message) as they come, (worker, None) when one ended; [] on timeout."""
        try:
            i, line = self._lines.get(timeout=timeout)
        except queue.Empty:
            return
        yield i, (decode(line) if line is not None else None)

    def stop(self) -> None:
        """Ask every worker to close its connections and report now."""
        for proc in self.procs:
            try:
                assert proc.stdin is not None
                proc.stdin.write("stop\n")
                proc.stdin.flush()
            except (OSError, ValueError):
                pass

    def reap(self, grace: float) -> None:
        """Wait at most C{grace} s for each, then terminate (and kill) it, by pid."""
        for proc in self.procs:
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                proc.terminate()
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
