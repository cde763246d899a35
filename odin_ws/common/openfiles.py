"""
Open-files limits (C{RLIMIT_NOFILE}) against the connections the
configuration asks for: every WebSocket is a file descriptor in a shard, and
every connection the parent holds before its handoff one in the parent.

The parent raises its soft limit to what the node needs (never above the
hard limit, never lowering it) before it starts its shards, which inherit
it. When the hard limit leaves a shard less room than
C{limits.max_connections_per_shard}, the shard takes no more than it can
hold (its capacity is capped), the parent logs it at start and C{/health}
shows it under C{open_files}: raise C{LimitNOFILE} (systemd) or
C{ulimit -Hn}. A process with C{CAP_SYS_RESOURCE} (root on a host) raises
its own hard limit to what it needs first (L{ensure}).
"""

from __future__ import annotations

import resource
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from odin_ws.common.settings import Settings

#: resource.getrlimit and resource.setrlimit, replaced by fakes in tests.
GetRlimit = Callable[[int], tuple[int, int]]
SetRlimit = Callable[[int, tuple[int, int]], None]

#: Descriptors a process needs besides its clients: stdio, logs, the control
#: channel and its passed descriptors, epoll, pipes, librdkafka's sockets.
HEADROOM = 256
#: What an unlimited hard limit counts as (Linux's default fs.nr_open).
UNLIMITED = 1 << 20


def _hard(value: int) -> int:
    return UNLIMITED if value == resource.RLIM_INFINITY else value


def needed(settings: Settings) -> int:
    """
    Descriptors one odinws process needs for the configured limits: a shard
    its connections, the parent the request heads and handoffs it holds.
    """
    limits = settings.limits
    shard = min(limits.max_connections_per_shard, limits.max_connections)
    parent = settings.listen.max_heads + settings.supervisor.max_handoffs_in_flight * settings.shards
    return max(shard, parent) + HEADROOM


def connection_room(soft: int) -> int:
    """Connections a process with a soft limit of C{soft} descriptors can hold."""
    return max(0, soft - HEADROOM)


def nr_open() -> int:
    """The kernel's ceiling for any process's open-files limit (C{fs.nr_open})."""
    try:
        with open("/proc/sys/fs/nr_open") as f:
            return int(f.read())
    except (OSError, ValueError):
        return UNLIMITED


def ensure(need: int, getrlimit: GetRlimit = resource.getrlimit,
           setrlimit: SetRlimit = resource.setrlimit,
           ceiling: Callable[[], int] = nr_open) -> tuple[int, int]:
    """
    Raise the soft limit to C{need}; never lower it. When C{need} is above
    the hard limit, first try to raise the hard limit too (up to
    C{fs.nr_open}): the kernel allows it to a process with
    C{CAP_SYS_RESOURCE} (root, unless a container drops it), and refuses it
    (EPERM) otherwise, and then the soft limit stops at the hard one.
    Returns (soft, hard) as they are afterwards.
    """
    soft, hard = getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and need > hard:
        try:
            raised = min(need, ceiling())
            if raised > hard:
                setrlimit(resource.RLIMIT_NOFILE, (raised, raised))
        except (ValueError, OSError):
            pass    # no CAP_SYS_RESOURCE: the hard limit stays
        soft, hard = getrlimit(resource.RLIMIT_NOFILE)
    target = min(need, _hard(hard))
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            pass    # reported by status(): the soft limit stays where it was
        soft, hard = getrlimit(resource.RLIMIT_NOFILE)
    return (UNLIMITED if soft == resource.RLIM_INFINITY else soft), _hard(hard)


@dataclass(frozen=True)
class OpenFiles:
    """The node's open-files limits against what its configuration asks for."""

    soft: int
    hard: int
    needed: int
    #: Connections the configuration allows (limits.max_connections).
    configured: int
    #: Connections the node can hold with these limits (at most C{configured}).
    allowed: int

    @property
    def capped(self) -> bool:
        """Whether the limits, not the configuration, bound the node's connections."""
        return self.allowed < self.configured

    def message(self) -> str:
        """One line for the start-up log and /health."""
        if not self.capped:
            return (f"open-files limit {self.soft} (hard {self.hard}): room for the "
                    f"{self.configured} connections of limits.max_connections")
        return (f"open-files limit {self.soft} (hard {self.hard}) caps connections at "
                f"{self.allowed} of limits.max_connections {self.configured}: each process "
                f"needs {self.needed} descriptors; raise the hard limit (systemd LimitNOFILE, "
                f"ulimit -Hn) or run more shards")

    def as_health(self) -> dict[str, Any]:
        return {"soft": self.soft, "hard": self.hard, "needed": self.needed,
                "max_connections": self.configured, "connections_allowed": self.allowed,
                "capped": self.capped, "message": self.message()}


def status(settings: Settings, getrlimit: GetRlimit = resource.getrlimit) -> OpenFiles:
    """The limits this process has now (its shards inherited them) against C{settings}."""
    soft, hard = getrlimit(resource.RLIMIT_NOFILE)
    soft = UNLIMITED if soft == resource.RLIM_INFINITY else soft
    limits = settings.limits
    per_shard = min(limits.max_connections_per_shard, connection_room(soft))
    allowed = min(limits.max_connections, per_shard * settings.shards)
    return OpenFiles(soft=soft, hard=_hard(hard), needed=needed(settings),
                     configured=limits.max_connections, allowed=allowed)
