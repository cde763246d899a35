"""
The resource guard: knows how much CPU and memory the node may use (cgroup
v2 or v1 limits, else the host), samples what the node uses, and closes the
door to new connections while usage is above the configured thresholds, so a
node near its limits keeps serving the clients it has instead of falling over.

It also raises C{RLIMIT_NOFILE} to the hard limit at start: every WebSocket
is a file descriptor.
"""

from __future__ import annotations

import os
import resource
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from twisted.internet import task
from twisted.logger import Logger

from odin_ws.common import metrics
from odin_ws.common.settings import GuardSettings, Settings

log = Logger()

_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass
class Budget:
    """What the node may use: CPUs (fractional under a quota) and memory bytes."""

    cpus: float
    memory: int
    source: str  # "cgroup2", "cgroup1" or "host"


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _cgroup_paths(root: str) -> dict[str, str]:
    """Map controller ("" for v2) -> cgroup path of this process."""
    text = _read(os.path.join(root, "proc/self/cgroup")) or ""
    paths = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        for controller in parts[1].split(",") if parts[1] else [""]:
            paths[controller] = parts[2]
    return paths


def _host_memory(root: str) -> int:
    for line in (_read(os.path.join(root, "proc/meminfo")) or "").splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    return os.sysconf("SC_PHYS_PAGES") * _PAGE


def read_budget(root: str = "/") -> Budget:
    """
    The node's CPU and memory budget. C{root} is C{/} in production; tests
    point it at a faked C{proc}/C{sys/fs/cgroup} layout.
    """
    host_cpus = float(len(os.sched_getaffinity(0)))
    host_memory = _host_memory(root)
    paths = _cgroup_paths(root)
    base = os.path.join(root, "sys/fs/cgroup")
    if "" in paths and _read(os.path.join(base, "cgroup.controllers")) is not None:
        here = os.path.join(base, paths[""].lstrip("/"))
        cpus, memory = host_cpus, host_memory
        cpu_max = (_read(os.path.join(here, "cpu.max")) or "max").split()
        if cpu_max and cpu_max[0] != "max" and len(cpu_max) == 2:
            cpus = min(cpus, int(cpu_max[0]) / int(cpu_max[1]))
        mem_max = _read(os.path.join(here, "memory.max")) or "max"
        if mem_max != "max":
            memory = min(memory, int(mem_max))
        return Budget(cpus, memory, "cgroup2")
    if "cpu" in paths or "memory" in paths:
        cpus, memory = host_cpus, host_memory
        cpu_dir = os.path.join(base, "cpu", paths.get("cpu", "/").lstrip("/"))
        quota = _read(os.path.join(cpu_dir, "cpu.cfs_quota_us"))
        period = _read(os.path.join(cpu_dir, "cpu.cfs_period_us"))
        if quota and period and int(quota) > 0:
            cpus = min(cpus, int(quota) / int(period))
        mem_dir = os.path.join(base, "memory", paths.get("memory", "/").lstrip("/"))
        limit = _read(os.path.join(mem_dir, "memory.limit_in_bytes"))
        if limit and int(limit) < host_memory:
            memory = int(limit)
        return Budget(cpus, memory, "cgroup1")
    return Budget(host_cpus, host_memory, "host")


def process_usage(pids: Iterable[int], root: str = "/") -> tuple[float, int]:
    """Total CPU seconds and resident bytes of C{pids} (missing ones skipped)."""
    cpu = 0.0
    rss = 0
    for pid in pids:
        stat = _read(os.path.join(root, f"proc/{pid}/stat"))
        statm = _read(os.path.join(root, f"proc/{pid}/statm"))
        if not stat or not statm:
            continue
        fields = stat.rpartition(")")[2].split()
        cpu += (int(fields[11]) + int(fields[12])) / _TICKS
        rss += int(statm.split()[1]) * _PAGE
    return cpu, rss


def raise_nofile() -> int:
    """Raise the soft open-files limit to the hard limit; return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as e:
            log.warn("could not raise the open-files limit to {hard}: {e}", hard=hard, e=e)
    return soft


class Guard:
    """
    Samples the node's processes every C{guard.interval} seconds.
    C{accepting} is False while CPU or memory use is above its threshold, and
    turns True again only once both are a margin below (hysteresis, so the
    door does not flap).
    """

    MARGIN = 0.05

    def __init__(self, reactor, pids: Callable[[], list[int]], budget: Budget,
                 settings: Settings, root: str = "/"):
        self.reactor = reactor
        self.pids = pids
        self.budget = budget
        self._settings: GuardSettings = settings.guard
        # The sampling interval needs a restart: the loop runs at this one.
        self.interval = self._settings.interval
        self.root = root
        self._accepting = True
        self._reason: str | None = None
        self._cpu_fraction = 0.0
        self._memory_fraction = 0.0
        self._last: tuple[float, float] | None = None
        self._loop = task.LoopingCall(self.sample)
        self._loop.clock = reactor

    @property
    def accepting(self) -> bool:
        """False while usage is above a threshold (and not yet a margin below)."""
        return self._accepting

    @property
    def reason(self) -> str | None:
        """Why the door is closed (C{"cpu"} or C{"memory"}), or None."""
        return self._reason

    @property
    def cpu_fraction(self) -> float:
        """CPU used over the last interval, as a fraction of the budget."""
        return self._cpu_fraction

    def reconfigure(self, settings: Settings) -> None:
        """A reload: the thresholds (the sampling interval needs a restart)."""
        self._settings = settings.guard

    @property
    def cpu_threshold(self) -> float:
        return self._settings.cpu_threshold

    @property
    def memory_threshold(self) -> float:
        return self._settings.memory_threshold

    def start(self) -> None:
        self._loop.start(self.interval, now=True)

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()

    def sample(self) -> None:
        cpu_seconds, rss = process_usage(self.pids(), self.root)
        now = self.reactor.seconds()
        if self._last is not None and now > self._last[0]:
            used = max(0.0, cpu_seconds - self._last[1]) / (now - self._last[0])
            self._cpu_fraction = used / self.budget.cpus
        self._last = (now, cpu_seconds)
        self._memory_fraction = rss / self.budget.memory
        metrics.GUARD_CPU.set(self._cpu_fraction)
        metrics.GUARD_MEMORY.set(self._memory_fraction)
        self._decide()

    def _decide(self) -> None:
        cpu_over = self.cpu_threshold > 0 and self._cpu_fraction > self.cpu_threshold
        mem_over = self.memory_threshold > 0 and self._memory_fraction > self.memory_threshold
        if self._accepting and (cpu_over or mem_over):
            self._accepting = False
            self._reason = "cpu" if cpu_over else "memory"
            log.warn("resource guard: {reason} at {pct:.0f}% of budget, refusing new "
                     "connections", reason=self._reason,
                     pct=100 * (self._cpu_fraction if cpu_over else self._memory_fraction))
        elif not self._accepting:
            cpu_ok = (self.cpu_threshold <= 0
                      or self._cpu_fraction < self.cpu_threshold - self.MARGIN)
            mem_ok = (self.memory_threshold <= 0
                      or self._memory_fraction < self.memory_threshold - self.MARGIN)
            if cpu_ok and mem_ok:
                log.info("resource guard: usage back below thresholds, accepting again")
                self._accepting = True
                self._reason = None
        metrics.GUARD_ACCEPTING.set(1 if self._accepting else 0)

    def as_health(self) -> dict:
        return {"accepting": self._accepting, "reason": self._reason,
                "cpu": round(self._cpu_fraction, 3), "memory": round(self._memory_fraction, 3),
                "budget": {"cpus": self.budget.cpus, "memory": self.budget.memory,
                           "source": self.budget.source}}
