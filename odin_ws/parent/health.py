"""
The node's /health document: whether it can serve, and each shard's state.
Answers 503, with a status and a one-line reason, when the node cannot serve
or cannot deliver: draining, still starting (waiting for its shards,
L{odin_ws.parent.readiness}), overloaded, no shard, no shard reaching Kafka
beyond C{kafka.unreachable_grace}, no shard assigned a partition beyond it
(a stalled group: connected, yet nothing is read), none of the configured topics on the
brokers, the history still warming when recovery is promised, or no room;
so a load balancer moves new clients elsewhere. A node that delivers despite
a problem answers 200 and names it in C{degraded} (docs/operations.md,
"Health"): among them partitions that no shard has held beyond the grace
(C{partitions_unassigned}, listed in C{unassigned_partitions}; the node
reads the others, L{odin_ws.parent.coverage}) and partitions a shard holds
but does not read (C{partitions_stalled}, listed in C{stalled_partitions};
L{odin_ws.shard.kafka.progress}).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from odin_ws.common import metrics, openfiles
from odin_ws.common.events import Partition
from odin_ws.common.settings import Settings


class Door(Protocol):
    """What /health reads of the node's door (L{odin_ws.parent.admission.Admission})."""

    @property
    def accepting(self) -> bool: ...
    @property
    def starting(self) -> bool: ...
    @property
    def overloaded(self) -> bool: ...


class Coverage(Protocol):
    """What /health reads of the group coverage (L{odin_ws.parent.coverage.GroupCoverage})."""

    def unassigned(self) -> dict[Partition, float]: ...


class Health:
    """
    @param settings: the node's settings (C{node_id}, C{limits.max_connections}).
    @param shards: returns the current shard handles.
    @param admission: the node's door (draining, overloaded).
    @param guard: the resource guard, whose readings the document shows.
    @param coverage: which partitions no shard holds, and for how long.
    """

    def __init__(self, settings: Settings, shards: Callable[[], list],
                 admission: Door, guard=None, coverage: Coverage | None = None):
        self._settings = settings
        self.shards = shards
        self.admission = admission
        self.guard = guard
        self.coverage = coverage
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
        room = any(s["accepting"] and s["connections"] < s["capacity"] for s in alive)
        delivery = Delivery.of(alive, self._settings)
        reason: str | None
        if not self.admission.accepting:
            status, reason = "draining", "shutting down: clients are moving to other nodes"
        elif self.admission.starting:
            status, reason = "starting", "waiting for every shard to register"
        elif self.admission.overloaded:
            what = (self.guard.reason if self.guard else None) or "resources"
            status, reason = "overloaded", f"resource guard: {what} over its threshold"
        elif not alive:
            status, reason = "unavailable", "no shard process is running"
        elif delivery.status is not None:
            status, reason = delivery.status, delivery.reason
        elif not room or connections >= max_connections:
            status, reason = "full", "no shard has room for another connection"
        else:
            status, reason = "ok", None
        degraded = list(delivery.degraded)
        if len(alive) < len(shards):
            degraded.append("shards_down")
        grace = self._settings.kafka.unreachable_grace
        held_by_none = sorted(p.label() for p, seconds in
                              (self.coverage.unassigned() if self.coverage else {}).items()
                              if seconds >= grace)
        if held_by_none:
            # Events of these partitions are not read (a shard down, a group
            # that did not assign them); the others are delivered.
            degraded.append("partitions_unassigned")
        # Held by a shard, with records to read, not read for
        # kafka.progress_grace (shard/kafka/progress.py): the shard rejoins.
        stalled = sorted(label for s in alive for label in
                         ((s.get("kafka") or {}).get("stalled") or {}))
        if stalled:
            degraded.append("partitions_stalled")
        # First assigned after the start's warm-up, their history read back
        # now or next (shard/kafka/warmup.py, LateRuns): events wait meanwhile.
        warming = sorted({label for s in alive for late in [_late(s)]
                          for label in (late.get("reading") or []) + (late.get("waiting") or [])})
        if warming:
            degraded.append("warming_partitions")
        overdue = late_warmups_overdue(alive, self._settings)
        if overdue:
            degraded.append("warmup_overdue")
        body = {
            "status": status,
            "node": self._settings.node_id,
            "accepting": status == "ok",
            "connections": connections,
            "capacity": capacity,
            "shards_alive": len(alive),
            "shards_total": len(shards),
            "kafka_connected": delivery.connected,
            "missing_topics": delivery.missing_topics,
            "degraded": degraded,
            "unassigned_partitions": held_by_none,
            "stalled_partitions": stalled,
            "warming_partitions": warming,
            "overdue_warmups": overdue,
            "shards": shards,
            # Whether the open-files limit, not limits.max_connections, bounds the node.
            "open_files": openfiles.status(self._settings).as_health(),
        }
        if reason is not None:
            body["reason"] = reason
        if self.guard is not None:
            body["guard"] = self.guard.as_health()
        return (200 if status == "ok" else 503), body


@dataclass(frozen=True)
class Delivery:
    """
    Whether the node can deliver events, from its alive shards' reports:
    C{status} (a 503 status of /health) and C{reason} when it cannot, and
    the degradations (C{degraded}) it delivers despite.
    """

    status: str | None
    reason: str | None
    degraded: tuple[str, ...]
    connected: bool
    missing_topics: list[str]

    @classmethod
    def of(cls, alive: list[dict], settings: Settings) -> Delivery:
        kafka = [s["kafka"] for s in alive if s.get("kafka")]
        warmups = [s["warmup"] for s in alive if s.get("warmup")]
        connected = any(k.get("connected") for k in kafka)
        # Missing as far as every shard knows: a shard clears a topic once it
        # is assigned some of its partitions, which the others may never be.
        missing = sorted(set.intersection(*(set(k.get("missing_topics") or ()) for k in kafka))
                         if kafka else ())
        degraded = []
        if any(not k.get("connected") for k in kafka):
            degraded.append("kafka_disconnected")
        if missing:
            degraded.append("topics_missing")
        warming = [w for w in warmups if w.get("state") == "running"]
        if warming:
            degraded.append("warming")
        # The start's warm-up, or the last late one (until a later one reads
        # all it should), failed or ran out of time.
        lasts = [(w.get("late") or {}).get("last") or {} for w in warmups]
        if any(w.get("state") == "failed" or w.get("incomplete") for w in warmups + lasts):
            degraded.append("history_cold")
        # Every node reads every partition: a node none of whose shards holds
        # one reads nothing (a rebalance; a group stalled after a broker pause).
        unassigned = bool(kafka) and len(kafka) == len(alive) and not any(
            k.get("assigned") for k in kafka)
        if unassigned and connected:
            degraded.append("unassigned")
        if any((s.get("registry") or {}).get("state") == "unreachable" for s in alive):
            # Records whose schema is cached still flow; new schemas do not.
            degraded.append("registry_unreachable")
        status = reason = None
        grace = settings.kafka.unreachable_grace
        # Every shard reported, none reaches a broker, and for longer than the grace.
        if kafka and len(kafka) == len(alive) and not connected and all(
                (k.get("disconnected_for") or 0) >= grace for k in kafka):
            errors = sorted({k["last_error"] for k in kafka if k.get("last_error")})
            status = "kafka_unreachable"
            reason = (f"no shard has reached a Kafka broker for "
                      f"{min(k.get('disconnected_for') or 0 for k in kafka):.0f}s"
                      + (f": {errors[0]}" if errors else ""))
        elif missing and set(missing) >= set(settings.kafka.topics):
            status = "topics_missing"
            reason = ("no configured topic is consumed, the brokers do not have them: "
                      + ", ".join(missing))
        elif unassigned and connected and all(
                (k.get("unassigned_for") or 0) >= grace for k in kafka):
            status = "unassigned"
            reason = (f"no shard has been assigned a partition for "
                      f"{min(k.get('unassigned_for') or 0 for k in kafka):.0f}s: the consumer "
                      f"group is rebalancing or stalled, nothing is read")
        elif warmups and len(warming) == len(alive) and _recovery_promised(settings):
            status = "warming"
            reason = "reading the recent past back from Kafka for recovery"
        return cls(status, reason, tuple(degraded), connected, missing)


#: A late warm-up reading (or partitions waiting for one) this many times
#: C{history.warmup_timeout} (at least L{OVERDUE_FLOOR} seconds) is overdue.
OVERDUE_FACTOR = 2.0
OVERDUE_FLOOR = 5.0


def overdue_after(settings: Settings) -> float:
    """
    Seconds after which a late warm-up is overdue. A run is cut at
    C{history.warmup_timeout} and then hands over what it read within one
    broker request (2 s at most, shard/kafka/warmread.py) and a consumer
    close; partitions asked for meanwhile wait for that run, then read in
    the next. Twice the timeout (30 s shipped; 5 s at least, for a short
    timeout's request and close) is past anything a working run takes: one
    still reading then is hung (a broker call or a close that does not
    return), and its partitions' events wait at the warm gate until it ends.
    """
    return max(OVERDUE_FACTOR * settings.history.warmup_timeout, OVERDUE_FLOOR)


def late_warmups_overdue(alive: list[dict], settings: Settings) -> list[str]:
    """
    One line per shard whose late warm-up has read, or whose partitions have
    waited for one, longer than L{overdue_after}: for C{overdue_warmups}.
    """
    limit = overdue_after(settings)
    timeout = settings.history.warmup_timeout
    lines = []
    for shard in alive:
        late = _late(shard)
        reading_for, waiting_for = late.get("reading_for"), late.get("waiting_for")
        if late.get("reading") and reading_for is not None and reading_for >= limit:
            lines.append(f"shard {shard['index']} has been reading the history of "
                         f"{', '.join(late['reading'])} back for {reading_for:.0f}s (a run "
                         f"stops at history.warmup_timeout, {timeout:g}s): their events "
                         f"wait until it ends")
        if late.get("waiting") and waiting_for is not None and waiting_for >= limit:
            lines.append(f"shard {shard['index']} has had {', '.join(late['waiting'])} wait "
                         f"{waiting_for:.0f}s for a history warm-up to start: their events "
                         f"wait until it ends")
    return lines


def _late(shard: dict) -> dict:
    """A shard's late warm-ups, as its status reports them (empty if none)."""
    return (shard.get("warmup") or {}).get("late") or {}


def _recovery_promised(settings: Settings) -> bool:
    """Clients may resume from a position: the history is kept and warmed at start."""
    history = settings.history
    return history.max_events_per_partition > 0 and history.warmup_timeout > 0
