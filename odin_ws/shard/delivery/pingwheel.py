"""
Server pings for all of a shard's WebSocket connections from one timer
(C{keepalive.ping_interval}, C{keepalive.ping_timeout}), in place of
Autobahn's auto-ping, which keeps a timer per connection (txaio's batched
call and its lambda: 312 bytes of every idle connection's ~4 KB); and the
keepalive comments of its event streams (C{answers} false: a stream has no
pong), each on its own due time rather than all of them in one turn.

A connection waits in one bucket of a wheel keyed by due time (in L{TICK}s):
opened, it is due for a ping one interval later; pinged, it is due for a
check one timeout later. At the check, a connection that answered (Autobahn
matches the pong to C{autoPingPending} and clears it) or sent a message
since is due for its next ping; one that did neither is dropped, as
Autobahn's auto-ping timeout drops it (L{Pingable.onAutoPingTimeout}). The
next ping waits for the check, so with a timeout longer than the interval a
connection is pinged once per timeout. New settings (L{PingWheel.reconfigure})
apply at each connection's next visit; with the interval at 0 no ping goes out.
"""

from __future__ import annotations

import math
import struct
import time
from typing import Any, Protocol

from twisted.internet import task

from odin_ws.common import metrics

#: Seconds between the wheel's turns: a ping or a drop comes at most this
#: late (Autobahn's batched timers: 0.2 s).
TICK = 0.25
#: C{Pingable.ping_due} of a connection in no bucket.
NOT_DUE = 0
#: Autobahn's layout, which its pong handler reads back: the send time (ns)
#: and a sequence number (unique to the connection's pending ping).
_PAYLOAD = struct.Struct(">QL")


class Pingable(Protocol):
    """What the wheel needs of a connection (Autobahn's server protocol has all but ping_due)."""

    #: The bucket the connection waits in: its key for a ping, the key's
    #: negation for a check, L{NOT_DUE} for none.
    ping_due: int
    #: The unanswered ping's payload (Autobahn clears it on the matching pong;
    #: its annotations have it always None).
    autoPingPending: Any

    def sendPing(self, payload: bytes | None = None) -> None: ...

    def onAutoPingTimeout(self) -> None: ...


class Commented(Protocol):
    """What the wheel needs of an event stream (C{answers} false)."""

    ping_due: int

    def ping(self) -> None:
        """Write a keepalive comment."""


class PingWheel:
    """
    One shard's keepalive pings: L{add} at open, L{discard} when lost.

    @param answers: the connections are L{Pingable} and must answer each
        ping within C{timeout}; else L{Commented}, pinged every interval.
    """

    def __init__(self, reactor: Any, interval: float, timeout: float, answers: bool = True):
        self._reactor = reactor
        self.interval = interval
        self.timeout = timeout
        self._answers = answers
        #: key (due time in TICKs) -> connections due for a ping / a check,
        #: in the order they came (a dict: 37 B a connection, a set's 98).
        self._pings: dict[int, dict[Any, None]] = {}
        self._checks: dict[int, dict[Any, None]] = {}
        self._loop: task.LoopingCall | None = None
        #: Pings sent so far.
        self.pings = 0

    def reconfigure(self, interval: float, timeout: float) -> None:
        """New settings, from each connection's next visit (no ping for those added at 0)."""
        self.interval, self.timeout = interval, timeout

    def __len__(self) -> int:
        return sum(map(len, self._pings.values())) + sum(map(len, self._checks.values()))

    def add(self, conn: Pingable | Commented) -> None:
        """An opened connection: its first ping one interval from now."""
        conn.ping_due = NOT_DUE
        if self.interval > 0:
            self._put(conn, self._pings, self.interval, 1)

    def discard(self, conn: Pingable | Commented) -> None:
        """A connection gone: out of its bucket (no reference kept to it)."""
        due, conn.ping_due = conn.ping_due, NOT_DUE
        if due == NOT_DUE:
            return
        buckets = self._pings if due > 0 else self._checks
        bucket = buckets.get(abs(due))
        if bucket is not None:
            bucket.pop(conn, None)
            if not bucket:
                del buckets[abs(due)]
        self._idle()

    def _put(self, conn: Any, buckets: dict[int, dict[Any, None]], delay: float,
             sign: int) -> None:
        key = math.ceil((self._reactor.seconds() + delay) / TICK - 1e-9)
        bucket = buckets.get(key)
        if bucket is None:
            bucket = buckets[key] = {}
        bucket[conn] = None
        conn.ping_due = sign * key
        if self._loop is None:
            self._loop = task.LoopingCall(self._turn)
            self._loop.clock = self._reactor
            self._loop.start(TICK, now=False)

    def _due(self, buckets: dict[int, dict[Any, None]], now_key: int) -> list[Any]:
        out: list[Any] = []
        for key in sorted(k for k in buckets if k <= now_key):
            out.extend(buckets.pop(key))
        for conn in out:
            conn.ping_due = NOT_DUE
        return out

    def _turn(self) -> None:
        now_key = math.floor(self._reactor.seconds() / TICK + 1e-9)
        for conn in self._due(self._checks, now_key):
            if conn.autoPingPending is not None:
                # Neither the pong nor any message since the ping.
                conn.autoPingPending = None
                metrics.PING_TIMEOUTS.inc()
                conn.onAutoPingTimeout()
            elif self.interval > 0:
                self._put(conn, self._pings, max(0.0, self.interval - self.timeout), 1)
        for conn in self._due(self._pings, now_key):
            if self.interval > 0:
                self._ping(conn)
        self._idle()

    def _ping(self, conn: Any) -> None:
        self.pings += 1
        if not self._answers:
            conn.ping()
            self._put(conn, self._pings, self.interval, 1)
            return
        conn.autoPingPending = payload = _PAYLOAD.pack(time.time_ns(), self.pings & 0xFFFFFFFF)
        conn.sendPing(payload)
        self._put(conn, self._checks, self.timeout, -1)

    def _idle(self) -> None:
        """No connection waits: the timer stops until one does."""
        if self._loop is not None and not self._pings and not self._checks:
            if self._loop.running:
                self._loop.stop()
            self._loop = None
