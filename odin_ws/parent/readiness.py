"""
Whether the node's shards are there to place connections on, in balance:
the startup gate and the restart hold (issue 16). Both exist because
placement is by fewest connections and connections never move: whatever
lands on the shards that happen to be up at one moment stays there.

* B{Startup gate.} Until every shard has registered once, or
  C{listen.startup_grace} has passed since the node started, the node does
  not accept: C{/health} says C{starting} (503) and upgrades get 503 with a
  C{Retry-After} of the grace left. Measured before: 30 clients connecting
  right after start landed [0, 30, 0] on three shards and stayed there.
* B{Restart hold.} While a shard that is restarting (not crash-looping) is
  due back, for at most C{listen.restart_hold} seconds from when it was
  seen down, each alive shard takes connections only up to a fair share,
  C{ceil((connections of the alive shards + 1) / (alive + due back))};
  beyond it upgrades get 503 with C{Retry-After: 1}. Measured before: a
  killed shard's clients reconnected within 0.5 s, before its restart
  registered (1.3 s), and all stayed on the survivor (200/0).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from odin_ws.common.settings import Settings

#: Retry-After (seconds) of an upgrade refused by the restart hold: the
#: restarted shard registers about 1.3 s after its crash with the default
#: restart delay (0.5 s), so a client coming back after a second finds it.
HOLD_RETRY_AFTER = 1


class Readiness:
    """
    @param clock: the reactor's C{seconds}.
    @param shards: returns the current shard handles (C{index}, C{alive},
        C{accepting}, C{connections}, C{capacity}, C{crash_looping}).
    @param settings: C{listen.startup_grace} and C{listen.restart_hold}.
    """

    def __init__(self, clock: Callable[[], float], shards: Callable[[], list],
                 settings: Settings):
        self._clock = clock
        self._shards = shards
        self._settings = settings
        self._started_at = clock()
        self._started = False
        #: Shards seen alive since the node started.
        self._registered: set[int] = set()
        #: Shard index -> when it was first seen not alive (cleared when alive).
        self._down_since: dict[int, float] = {}

    def reconfigure(self, settings: Settings) -> None:
        """A reload: the restart hold is live (the startup grace matters only once)."""
        self._settings = settings

    def node_started(self) -> None:
        """The node starts now: the startup grace, and every shard's downtime, count from here."""
        self._started_at = now = self._clock()
        self._started = False
        self._registered = set()
        self._down_since = {h.index: now for h in self._shards()}

    @property
    def starting(self) -> bool:
        """True until every shard has registered once or the startup grace has passed."""
        if not self._started:
            handles = self._shards()
            self._registered.update(h.index for h in handles if h.alive)
            if ((handles and all(h.index in self._registered for h in handles))
                    or self._clock() - self._started_at >= self._settings.listen.startup_grace):
                self._started = True
        return not self._started

    def starting_retry_after(self) -> int:
        """Whole seconds of startup grace left (at least 1)."""
        left = self._settings.listen.startup_grace - (self._clock() - self._started_at)
        return max(1, math.ceil(left))

    def due_back(self) -> list[Any]:
        """
        The shards not alive now that are expected back soon: restarting, not
        crash-looping, held for less than C{listen.restart_hold}.
        """
        now = self._clock()
        hold = self._settings.listen.restart_hold
        due = []
        for h in self._shards():
            if h.alive:
                self._down_since.pop(h.index, None)
                continue
            since = self._down_since.setdefault(h.index, now)
            if not h.crash_looping and now - since < hold:
                due.append(h)
        return due

    def fair_share(self) -> int | None:
        """
        The most connections an alive shard may hold while a shard is due
        back, or None when no shard is (placement as usual).
        """
        due = self.due_back()
        alive = [h for h in self._shards() if h.alive]
        if not due or not alive:
            return None
        total = sum(h.connections for h in alive)
        return math.ceil((total + 1) / (len(alive) + len(due)))

    def held(self) -> bool:
        """
        True when the next connection would take every open shard past its
        fair share while a shard is due back: refuse it (503) for now.
        """
        fair = self.fair_share()
        if fair is None:
            return False
        open_shards = [h for h in self._shards()
                       if h.alive and h.accepting and h.connections < h.capacity]
        # No open shard at all is placement's answer (no_shard), not ours.
        return bool(open_shards) and min(h.connections for h in open_shards) >= fair
