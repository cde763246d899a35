"""
The parent's door: whether the node takes new connections at all (it stops
on drain), the resource guard's verdict, and the per-IP connection rate.
One object read by the public and admin dispatchers and by C{/health}, so
they never disagree about whether the node is accepting.
"""

from __future__ import annotations

from typing import Any, Callable

from odin_ws.common.ratelimit import KeyedBuckets
from odin_ws.common.settings import Settings


class Admission:
    """
    @param guard: the resource guard (C{accepting}, C{reason}), or None.
    @param settings: the node's settings, whose C{limits} give the rate of
        new connections per client IP; None for no per-IP rate.
    """

    def __init__(self, clock: Callable[[], float], guard: Any = None,
                 settings: Settings | None = None):
        self._clock = clock
        self._guard = guard
        self._accepting = True
        self._buckets: KeyedBuckets | None = None
        self._rate: tuple[float, int] | None = None
        if settings is not None:
            self.reconfigure(settings)

    @property
    def accepting(self) -> bool:
        """False once L{stop_accepting} was called (the node is draining)."""
        return self._accepting

    def stop_accepting(self) -> None:
        self._accepting = False

    def start_accepting(self) -> None:
        self._accepting = True

    def reconfigure(self, settings: Settings) -> None:
        """A reload: the per-IP rate, if it changed."""
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

    def check(self, ip: str) -> tuple[int, str] | None:
        """None to let C{ip} through, or C{(status, reason)} to refuse it."""
        if not self._accepting:
            return (503, "draining")
        if self.overloaded:
            return (503, "overloaded_" + (self._guard.reason or "resources"))
        if self._buckets is not None and not self._buckets.take(ip):
            return (429, "ip_rate")
        return None
