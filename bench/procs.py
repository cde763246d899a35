"""
Processes of the benchmark: start pinned to a CPU, talk to over stdin/stdout,
sample RSS and CPU from /proc, and stop by pid (every one, even on failure).
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def free_port() -> int:
    """A loopback TCP port that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_bytes(pid: int) -> int:
    """Resident set size of one process (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * PAGE
    except (OSError, IndexError, ValueError):
        return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process, its threads included."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return 0.0


def children(pid: int) -> list[int]:
    """Direct children of a process."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


class CpuMeter:
    """CPU share of a set of processes between two calls of L{share}."""

    def __init__(self, pids: list[int]):
        self.pids = pids
        self.reset()

    def reset(self) -> None:
        self._t = time.monotonic()
        self._cpu = sum(cpu_seconds(p) for p in self.pids)

    def share(self) -> float:
        t, cpu = time.monotonic(), sum(cpu_seconds(p) for p in self.pids)
        dt = t - self._t
        value = (cpu - self._cpu) / dt if dt > 0 else 0.0
        self._t, self._cpu = t, cpu
        return value


def core_times() -> dict[int, tuple[float, float]]:
    """Per CPU: (busy, total) jiffies from /proc/stat (busy includes irq/softirq)."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu") and line[3].isdigit():
                name, *vals = line.split()
                v = [int(x) for x in vals]
                idle = v[3] + v[4]  # idle + iowait
                out[int(name[3:])] = (sum(v[:8]) - idle, sum(v[:8]))
    return out


class CoreMeter:
    """Busy share of each CPU (all processes, interrupts included) between calls."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self._last = core_times()

    def shares(self) -> dict[int, float]:
        now = core_times()
        out = {}
        for cpu, (busy, total) in now.items():
            b0, t0 = self._last.get(cpu, (busy, total))
            out[cpu] = (busy - b0) / (total - t0) if total > t0 else 0.0
        self._last = now
        return out


class Proc:
    """A child process pinned to CPUs, with line-based stdin/stdout."""

    registry: list[Proc] = []

    def __init__(self, name: str, argv: list[str], cpus: set[int] | None, env: dict | None = None,
                 log_path: str | None = None, cwd: str | None = None, stdout_pipe: bool = True):
        self.name = name
        self.log_path = log_path
        log = open(log_path, "ab") if log_path else subprocess.DEVNULL
        self.popen = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE if stdout_pipe else log,
            stderr=log, env=env, cwd=cwd, start_new_session=True)
        if log_path:
            log.close()
        self.pid = self.popen.pid
        if cpus is not None:
            os.sched_setaffinity(self.pid, cpus)
        Proc.registry.append(self)
        self._buf = b""

    def send(self, line: str) -> None:
        """Write one command line to the process's stdin."""
        self.popen.stdin.write(line.encode() + b"\n")
        self.popen.stdin.flush()

    def readline(self, timeout: float) -> str:
        """The next stdout line, waiting at most C{timeout} seconds."""
        deadline = time.monotonic() + timeout
        fd = self.popen.stdout.fileno()
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{self.name}: no output within {timeout:g}s")
            if not select.select([fd], [], [], left)[0]:
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                raise RuntimeError(f"{self.name} exited (code {self.popen.poll()}), "
                                   f"see {self.log_path}")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line.decode()

    def read_json(self, timeout: float) -> dict:
        """The next stdout line that is a JSON object."""
        while True:
            line = self.readline(timeout).strip()
            if line.startswith("{"):
                return json.loads(line)

    def wait_for(self, text: str, timeout: float) -> None:
        """Read stdout lines until one contains C{text}."""
        deadline = time.monotonic() + timeout
        while text not in self.readline(max(0.01, deadline - time.monotonic())):
            pass

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM the process (and its process group), SIGKILL after C{grace}."""
        if self in Proc.registry:
            Proc.registry.remove(self)
        if self.popen.poll() is None:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(self.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    self.popen.wait(grace)
                    break
                except subprocess.TimeoutExpired:
                    continue
        for f in (self.popen.stdin, self.popen.stdout):
            try:
                if f:
                    f.close()
            except OSError:
                pass

    @classmethod
    def stop_all(cls) -> None:
        """Stop every process still registered (newest first)."""
        for p in reversed(list(cls.registry)):
            p.stop()
