"""
The shard's connection registry (L{Connections}): every client connection
the shard holds, whatever its transport, and how many each address holds
(C{limits.max_connections_per_ip}). Transports report to it as a
connection is made, taken over (a WebSocket head that turned out to ask
for an event stream) and lost; the shard reads counts from it and asks it
to close everyone (drain, stop).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

from twisted.internet import defer

from odin_ws.common import metrics
from odin_ws.common.settings import Settings
from odin_ws.shard.delivery.fanout import limit_unsent


class Client(Protocol):
    """What the registry needs of a connection (a WebSocket or an event stream)."""

    @property
    def transport(self) -> Any: ...

    def close(self, code: int, reason: str) -> None: ...


class Connections:
    """
    The open connections of one shard and their per-address counts.

    @param reactor: for the spread of a drain's closes.
    """

    def __init__(self, reactor: Any, settings: Settings):
        self._reactor = reactor
        self._clients: set[Any] = set()
        self._per_ip: dict[str, int] = {}
        self._drained: defer.Deferred[None] | None = None
        self.reconfigure(settings)

    def reconfigure(self, settings: Settings) -> None:
        """The live limits: per address, and the kernel's unsent bytes for new connections."""
        self._max_per_ip = settings.limits.max_connections_per_ip
        self._kernel_unsent = settings.outbound.kernel_unsent_bytes

    def __len__(self) -> int:
        return len(self._clients)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._clients)

    def __contains__(self, client: object) -> bool:
        return client in self._clients

    @property
    def per_ip(self) -> dict[str, int]:
        """Connections held per address (a copy)."""
        return dict(self._per_ip)

    # -- per address

    def admit_ip(self, ip: str) -> bool:
        """Count a connection of C{ip}; False if the address already holds its share."""
        held = self._per_ip.get(ip, 0)
        if held >= self._max_per_ip:
            return False
        self._per_ip[ip] = held + 1
        return True

    def release_ip(self, ip: str) -> None:
        """A connection of C{ip} counted by L{admit_ip} is gone."""
        left = self._per_ip.get(ip, 1) - 1
        if left > 0:
            self._per_ip[ip] = left
        else:
            self._per_ip.pop(ip, None)

    # -- connections

    def made(self, client: Client) -> None:
        """A connection was adopted."""
        limit_unsent(client.transport, self._kernel_unsent)
        self._clients.add(client)
        metrics.CONNECTIONS.set(len(self._clients))

    def replaced(self, old: Client, new: Client) -> None:
        """C{new} serves the connection C{old} was made for (an SSE stream's take-over)."""
        self._clients.discard(old)
        self._clients.add(new)

    def lost(self, client: Client) -> None:
        """A connection is gone; a drain waiting for the last one fires."""
        self._clients.discard(client)
        metrics.CONNECTIONS.set(len(self._clients))
        if self._drained is not None and not self._clients:
            d, self._drained = self._drained, None
            d.callback(None)

    def close_all(self, window: float, code: int, reason: str) -> defer.Deferred[int]:
        """
        Close every connection with C{code}, the closes spread evenly over
        C{window} seconds so clients do not all come back at once; fires
        with their number once the last is gone.
        """
        clients = list(self._clients)
        count = len(clients)
        if not clients:
            return defer.succeed(0)
        d: defer.Deferred[None] = defer.Deferred()
        self._drained = d
        step = window / count if window > 0 else 0
        for i, client in enumerate(clients):
            self._reactor.callLater(i * step, client.close, code, reason)
        return d.addCallback(lambda _: count)

    def abort_all(self) -> None:
        """Drop every connection now (the shard stops): nothing more goes out."""
        for client in list(self._clients):
            if client.outbox is not None:
                client.outbox.close()   # nothing more goes out on an aborted socket
            client.transport.abortConnection()
