"""
The listener stops accepting while the parent holds C{listen.max_heads}
connections before their upgrade, instead of accepting more and answering
them 503 C{node_heads}.

In a reconnection storm the parent accepts every waiting connection within
a second or two, long before the shards have adopted them: a storm larger
than C{listen.max_heads} got 503 for the excess (904 of 5,000 at the
default 4096), and a storm larger than the parent's open-files limit could
not be held at all. A connection the kernel keeps in the listen backlog
costs the parent nothing and its head timer has not started; so at the cap
the port stops reading (no C{accept}) and starts again as soon as a held
connection leaves. Its next accept loop is bounded by the room left
(L{twisted_internals.limit_accepts}), so the cap is kept, not overshot by
Twisted's batch of accepts (from the first connection on: the port is known
through it, so a cap under Twisted's first batch of 100 may be passed once,
and the excess answered 503 C{node_heads} by the door as before).

Past the backlog (C{backlog=} of the endpoint, capped by
C{net.core.somaxconn}) the kernel drops SYNs and clients resend them after
1, 3, 7, 15, 31 and 63 s; a client whose SYNs find the backlog full for
that long gives up its connect (ETIMEDOUT after about 127 s with Linux's
default C{tcp_syn_retries}): a storm the shards take minutes to adopt
still loses some clients, at the TCP level instead of with a 503
(docs/performance.md, "Reconnection storms").
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from odin_ws.common import metrics, twisted_internals


class AcceptPause:
    """
    One listener's pause at the cap; its dispatcher reports each connection
    it holds and each it lets go of.

    @param room: how many more connections the door may hold now
        (C{listen.max_heads} less those held).
    """

    def __init__(self, reactor: Any, room: Callable[[], int]):
        self._reactor = reactor
        self._room = room
        self._port: Any = None
        self._paused = False
        self._clamp_due = False

    @property
    def paused(self) -> bool:
        return self._paused

    def held(self, transport: Any) -> None:
        """A connection accepted through C{transport}'s port is held."""
        port = twisted_internals.accepting_port(transport)
        if port is None:
            return
        self._port = port
        room = self._room()
        twisted_internals.limit_accepts(port, room)
        if room <= 0 and not self._paused:
            self._paused = True
            port.stopReading()
            metrics.ACCEPT_PAUSED.inc()
            metrics.ACCEPT_PAUSES.inc()
        if not self._clamp_due:
            # The accept loop resets numberAccepts when it ends (to the
            # number it took, or 20 more): bound it again before the next.
            self._clamp_due = True
            self._reactor.callLater(0, self._clamp)

    def released(self) -> None:
        """A held connection left: accept again below the cap (unless the port was closed)."""
        if not self._paused or self._room() <= 0:
            return
        self._paused = False
        metrics.ACCEPT_PAUSED.dec()
        port = self._port
        if port is not None and port.connected and not port.disconnecting:
            twisted_internals.limit_accepts(port, self._room())
            port.startReading()

    def _clamp(self) -> None:
        self._clamp_due = False
        if self._port is not None and not self._paused:
            twisted_internals.limit_accepts(self._port, self._room())
