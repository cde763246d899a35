"""
The listen backlog the kernel grants the public listener. In a reconnection
storm the listener pauses at C{listen.max_heads} and the rest of the storm
waits in that backlog; past it the kernel drops SYNs and a client whose
retries all find it full gives up after about two minutes
(docs/operations.md, "Reconnection storms"). The kernel caps every backlog
at C{net.core.somaxconn} without a word, so the node says it at start.
"""

from __future__ import annotations

from typing import Any

from odin_ws.common import twisted_internals

#: Where Linux keeps the cap.
SOMAXCONN = "/proc/sys/net/core/somaxconn"


def somaxconn(path: str = SOMAXCONN) -> int | None:
    """C{net.core.somaxconn}, or None where it cannot be read (not Linux)."""
    try:
        with open(path, encoding="ascii") as f:
            return int(f.read())
    except (OSError, ValueError):
        return None


def capped(endpoint: Any, cap: int | None) -> str | None:
    """
    What to tell the operator when C{endpoint} asks for a larger backlog
    than the kernel's C{cap} grants; None when it does not (or either is
    unknown: a systemd socket has its own C{Backlog=}).
    """
    asked = twisted_internals.endpoint_backlog(endpoint)
    if asked is None or cap is None or asked <= cap:
        return None
    return (f"listen.port asks for a backlog of {asked}, but net.core.somaxconn is {cap}: "
            f"the kernel grants {cap}, and a reconnection storm beyond listen.max_heads + "
            f"{cap} connections waits in SYN retries (sysctl -w net.core.somaxconn={asked})")
