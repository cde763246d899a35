"""
Where a new connection goes: the least-loaded shard with room (see
docs/architecture.md, "One connection, from accept to close", step 3).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

#: L{place}'s reason when every shard with room has its handoff slots taken:
#: the upgrade waits for one (L{odin_ws.parent.handoffqueue.HandoffQueue})
#: instead of being refused.
SATURATED = "saturated"


def place(handles: Iterable[Any], max_connections: int) -> tuple[Any | None, str | None]:
    """
    The shard for a new connection: among alive, accepting shards below their
    capacity, the one with the fewest connections (ties: lowest index). A
    stalled shard (no recent stats) is not accepting; a saturated one (too
    many handoffs unanswered) is skipped until one is answered.

    @return: C{(handle, None)}, or C{(None, reason)} with reason C{node_full}
        (the node is at C{max_connections}), C{no_shard} (no shard alive,
        accepting and below its capacity), or L{SATURATED} (there are such
        shards, but every one is saturated: a slot frees when a handoff is
        answered).
    """
    handles = list(handles)
    if sum(h.connections for h in handles if h.alive) >= max_connections:
        return None, "node_full"
    room = [h for h in handles if h.alive and h.accepting and h.connections < h.capacity]
    if not room:
        return None, "no_shard"
    candidates = [h for h in room if not h.saturated]
    if not candidates:
        return None, SATURATED
    return min(candidates, key=lambda h: (h.connections, h.index)), None
