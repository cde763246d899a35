"""
Which CPU each shard is pinned to (the C{cpu_affinity} setting).
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from odin_ws.common.config import ConfigError


def allowed_cpus() -> list[int] | None:
    """
    The CPUs this process may run on (respects cgroups/cpusets and
    C{taskset}), or None where the platform cannot tell.
    """
    getter = getattr(os, "sched_getaffinity", None)
    if getter is None:
        return None
    return sorted(getter(0))


def assign(setting: object, shards: int, allowed: Iterable[int] | None) -> list[int | None]:
    """
    The CPU of each shard, None meaning "not pinned".

    @param setting: C{"auto"}, C{"off"} or a list (or tuple) of CPU numbers.
    @param allowed: the CPUs the parent may use (None: unknown).
    @raise ConfigError: a listed CPU is not one the parent may use.
    """
    if setting == "off":
        return [None] * shards
    cpus = sorted(allowed) if allowed is not None else None
    if setting == "auto":
        if not cpus:
            return [None] * shards
        return [cpus[i % len(cpus)] for i in range(shards)]
    if not isinstance(setting, (list, tuple)) or not setting:
        raise ConfigError(f"cpu_affinity: expected 'auto', 'off' or a list of CPU numbers, "
                          f"got {setting!r}")
    if cpus is not None:
        outside = sorted(set(setting) - set(cpus))
        if outside:
            raise ConfigError(f"cpu_affinity: CPU {', '.join(map(str, outside))} not available "
                              f"to this process (allowed: {_ranges(cpus)})")
    return [setting[i % len(setting)] for i in range(shards)]


def pin(pid: int, cpu: int) -> None:
    """
    Pin process C{pid} (its main thread; threads it creates later inherit
    the mask) to C{cpu}.

    @raise OSError: the kernel refused, or the platform has no affinity.
    """
    setter = getattr(os, "sched_setaffinity", None)
    if setter is None:
        raise OSError("sched_setaffinity is not available on this platform")
    setter(pid, {cpu})


def _ranges(cpus: list[int]) -> str:
    """C{[0, 1, 2, 5]} -> C{"0-2,5"}."""
    out = []
    start = prev = cpus[0]
    for c in cpus[1:] + [None]:
        if c is not None and c == prev + 1:
            prev = c
            continue
        out.append(str(start) if start == prev else f"{start}-{prev}")
        if c is not None:
            start = prev = c
    return ",".join(out)
