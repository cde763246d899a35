"""
The node's /health document: whether it can serve, and each shard's state.
Answers 503 when no shard can take a connection, the node is draining, or it
is still starting (waiting for its shards, L{odin_ws.parent.readiness}), so
a load balancer moves new clients elsewhere.
"""

from __future__ import annotations

from collections.abc import Callable

from odin_ws.common import metrics, openfiles
from odin_ws.common.settings import Settings
from odin_ws.parent.admission import Admission


class Health:
    """
    @param settings: the node's settings (C{node_id}, C{limits.max_connections}).
    @param shards: returns the current shard handles.
    @param admission: the node's door (draining, overloaded).
    @param guard: the resource guard, whose readings the document shows.
    """

    def __init__(self, settings: Settings, shards: Callable[[], list],
                 admission: Admission, guard=None):
        self._settings = settings
        self.shards = shards
        self.admission = admission
        self.guard = guard
        metrics.READY.set_function(lambda: 1 if self()[0] == 200 else 0)

    def reconfigure(self, settings: Settings) -> None:
        """A reload (e.g. C{limits.max_connections}) reaches /health too."""
        self._settings = settings

    def __call__(self) -> tuple[int, dict]:
        shards = [h.as_health() for h in self.shards()]
        alive = [s for s in shards if s["alive"]]
        connections = sum(s["connections"] for s in alive)
        max_connections = self._settings.limits.max_connections
        capacity = min(sum(s["capacity"] for s in alive), max_connections)
        draining = not self.admission.accepting
        room = any(s["accepting"] and s["connections"] < s["capacity"] for s in alive)
        overloaded = self.admission.overloaded
        if draining:
            status = "draining"
        elif self.admission.starting:
            status = "starting"
        elif overloaded:
            status = "overloaded"
        elif not alive:
            status = "unavailable"
        elif not room or connections >= max_connections:
            status = "full"
        else:
            status = "ok"
        kafka_ok = any((s.get("kafka") or {}).get("connected") for s in alive)
        body = {
            "status": status,
            "node": self._settings.node_id,
            "accepting": status == "ok",
            "connections": connections,
            "capacity": capacity,
            "shards_alive": len(alive),
            "shards_total": len(shards),
            "kafka_connected": kafka_ok,
            "shards": shards,
            # Whether the open-files limit, not limits.max_connections, bounds the node.
            "open_files": openfiles.status(self._settings).as_health(),
        }
        if self.guard is not None:
            body["guard"] = self.guard.as_health()
        return (200 if status == "ok" else 503), body
