"""
The parent's door: whether the node takes new connections at all (it stops
on drain, and waits for its shards at start), the resource guard's verdict,
the restart hold, and the limits on every accepted connection before its
upgrade: the per-IP connection rate and the connections the parent holds
(reading or answering their head) per IP and per node. One object read by
the public and admin dispatchers and by C{/health}, so they never disagree
about whether the node is accepting.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from odin_ws.common.ratelimit import KeyedBuckets
from odin_ws.common.settings import Settings
from odin_ws.parent.readiness import HOLD_RETRY_AFTER, Readiness


class Admission:
    """
    @param guard: the resource guard (C{accepting}, C{reason}), or None.
    @param settings: the node's settings (C{limits}: the per-IP connection
        rate; C{listen}: the caps on connections held before the upgrade,
        the startup grace and the restart hold); None for no limits.
    @param shards: returns the current shard handles, for the startup gate
        and the restart hold (L{Readiness}); None for neither.
    """

    def __init__(self, clock: Callable[[], float], guard: Any = None,
                 settings: Settings | None = None,
                 shards: Callable[[], list] | None = None):
        self._clock = clock
        self._guard = guard
        self._accepting = True
        self._settings = settings
        self._buckets: KeyedBuckets | None = None
        self._rate: tuple[float, int] | None = None
        self._held = 0
        self._held_by_ip: dict[str, int] = {}
        self._readiness = (Readiness(clock, shards, settings)
                           if shards is not None and settings is not None else None)
        if settings is not None:
            self.reconfigure(settings)

    @property
    def accepting(self) -> bool:
        """False once L{stop_accepting} was called (the node is draining)."""
        return self._accepting

    def stop_accepting(self) -> None:
        self._accepting = False

    def node_started(self) -> None:
        """The node starts now: the startup grace counts from here."""
        if self._readiness is not None:
            self._readiness.node_started()

    @property
    def starting(self) -> bool:
        """True while the node waits for its shards at start (L{Readiness.starting})."""
        return self._readiness is not None and self._readiness.starting

    def reconfigure(self, settings: Settings) -> None:
        """A reload: the per-IP rate (if it changed), the caps, the restart hold."""
        self._settings = settings
        if self._readiness is not None:
            self._readiness.reconfigure(settings)
        self.set_rate(settings.limits.connection_rate_per_ip,
                      settings.limits.connection_burst_per_ip)

    @property
    def rate(self) -> tuple[float, int] | None:
        """C{(per_second, burst)} of new connections per client IP, or None."""
        return self._rate

    @property
    def overloaded(self) -> bool:
        return self._guard is not None and not self._guard.accepting

    def set_rate(self, per_second: float, burst: int) -> None:
        """New per-IP rate; the buckets start full again if it changed."""
        if self._rate != (per_second, burst):
            self._rate = (per_second, burst)
            self._buckets = KeyedBuckets(per_second, burst, self._clock)

    # -- every accepted connection

    @property
    def held(self) -> int:
        """Connections accepted and not yet closed or handed over (L{admit}, L{release})."""
        return self._held

    def held_by(self, ip: str) -> int:
        """Of L{held}, those from C{ip}."""
        return self._held_by_ip.get(ip, 0)

    def admit(self, ip: str, trusted: bool = False) -> tuple[int, str] | None:
        """
        A connection from C{ip} was accepted, before any byte is read: None
        to take it (it counts until L{release}), or C{(status, reason)} to
        refuse it. A trusted proxy (C{trusted}) carries many clients: it is
        held to the node's cap only, its clients' rate is L{charge}d once
        their head names them.
        """
        if self._settings is None:
            return None
        listen = self._settings.listen
        if self._held >= listen.max_heads:
            return (503, "node_heads")
        if not trusted:
            if self._held_by_ip.get(ip, 0) >= listen.max_heads_per_ip:
                return (429, "ip_heads")
            verdict = self.charge(ip)
            if verdict is not None:
                return verdict
        self._held += 1
        self._held_by_ip[ip] = self._held_by_ip.get(ip, 0) + 1
        return None

    def release(self, ip: str) -> None:
        """A connection L{admit}ted from C{ip} is closed or handed over."""
        count = self._held_by_ip.get(ip, 0)
        if count <= 0:
            return
        self._held -= 1
        if count == 1:
            del self._held_by_ip[ip]
        else:
            self._held_by_ip[ip] = count - 1

    def charge(self, ip: str) -> tuple[int, str] | None:
        """One new connection of C{ip} against its rate: None, or C{(429, "ip_rate")}."""
        if self._buckets is not None and not self._buckets.take(ip):
            return (429, "ip_rate")
        return None

    # -- upgrades

    def check(self, ip: str) -> tuple[int, str] | None:
        """
        Before placing an upgrade of C{ip} (whose rate was charged when it
        was admitted): None to let it through, or C{(status, reason)}.
        """
        if not self._accepting:
            return (503, "draining")
        if self.starting:
            return (503, "starting")
        if self.overloaded:
            return (503, "overloaded_" + (self._guard.reason or "resources"))
        if self._readiness is not None and self._readiness.held():
            return (503, "rebalancing")
        return None

    def retry_after(self, reason: str) -> int | None:
        """The Retry-After of a refusal for C{reason}, when it is not C{listen.retry_after}."""
        if reason == "starting" and self._readiness is not None:
            return self._readiness.starting_retry_after()
        if reason == "rebalancing":
            return HOLD_RETRY_AFTER
        return None
