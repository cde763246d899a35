"""
The AMP commands spoken on the control channel between the parent and each
shard (one Unix-domain socketpair per shard, see docs/architecture.md).

Shard -> parent: L{Register}, L{Stats}, L{Publish}.
Parent -> shard: L{Handoff}, L{Deliver}, L{GetMetrics}, L{Drain}, L{Reload}.
"""

from __future__ import annotations

from typing import Any

from twisted.protocols import amp

#: AMP refuses values longer than 0xffff bytes; stay a little below.
CHUNK = 60000


class BigBytes(amp.Argument):
    """
    Bytes of any length, carried as several AMP keys (C{name}, C{name.1},
    C{name.2}, ...) so a value is not limited to AMP's 64 KiB.
    """

    def toBox(self, name: bytes, strings: dict[bytes, bytes], objects: dict[str, Any],
              proto: amp.AMP | None) -> None:
        value = objects[str(name, "ascii")]  # objects are keyed by native str
        if not isinstance(value, bytes):
            raise TypeError(f"{name!r} must be bytes, got {type(value).__name__}")
        chunks = [value[i:i + CHUNK] for i in range(0, len(value), CHUNK)] or [b""]
        strings[name] = b"%d" % len(chunks)
        for i, chunk in enumerate(chunks):
            strings[name + b".%d" % i] = chunk

    def fromBox(self, name: bytes, strings: dict[bytes, bytes], objects: dict[str, Any],
                proto: amp.AMP | None) -> None:
        count = int(strings[name])
        parts = []
        for i in range(count):
            parts.append(strings.pop(name + b".%d" % i))
        objects[str(name, "ascii")] = b"".join(parts)


class Register(amp.Command):
    """
    A shard announces itself once its control channel is up. The answer
    carries the hub's de-duplication marks (L{odin_ws.common.highwater.HighWater.exported}):
    what the node has relayed already, which the shard counts as seen
    before it delivers anything it consumed.
    """

    arguments = [
        (b"index", amp.Integer()),
        (b"pid", amp.Integer()),
        (b"capacity", amp.Integer()),
    ]
    response = [(b"marks", BigBytes())]


class Stats(amp.Command):
    """
    A shard's current load, sent every C{supervisor.stats_interval}.
    C{status} is JSON: C{{"kafka": {...}, "accepting": bool, ...}}.
    """

    arguments = [
        (b"connections", amp.Integer()),
        (b"capacity", amp.Integer()),
        (b"status", BigBytes()),
    ]
    requiresAnswer = False


class Publish(amp.Command):
    """
    A batch of events a shard consumed from Kafka (L{odin_ws.common.events.encode_batch}),
    for the hub to relay to every other shard. The answer means the hub has
    taken the batch; the shard then lets its consumer store the offsets.
    """

    arguments = [(b"batch", BigBytes())]
    response = []


class Deliver(amp.Command):
    """A batch relayed by the hub from another shard."""

    arguments = [(b"batch", BigBytes())]
    response = []


class HandoffRefused(Exception):
    """The shard could not adopt the connection (full, draining, bad fd)."""


class Handoff(amp.Command):
    """
    The parent hands a client socket to a shard: the descriptor, and the
    bytes of the request it already read (replayed into the shard's
    WebSocket protocol; empty for TLS, which is handed over unread).
    """

    arguments = [
        (b"fd", amp.Descriptor()),
        (b"head", BigBytes()),
        (b"peer", amp.Unicode()),
        (b"tls", amp.Boolean()),
    ]
    response = [(b"connections", amp.Integer())]
    errors = {HandoffRefused: b"HANDOFF_REFUSED"}


class GetMetrics(amp.Command):
    """The shard's Prometheus exposition text."""

    arguments = []
    response = [(b"text", BigBytes())]


class Drain(amp.Command):
    """
    Stop accepting and close every client with the restart close code,
    spread over C{window} seconds. Answers when the last client is gone.
    """

    arguments = [(b"window", amp.Float())]
    response = [(b"closed", amp.Integer())]


class Rejoin(amp.Command):
    """
    Leave the node's consumer group and join it again, so that it assigns
    every partition anew (the parent found partitions no shard holds:
    L{odin_ws.parent.coverage}). C{rejoining} is false when the shard's
    consumer is not running.
    """

    arguments = []
    response = [(b"rejoining", amp.Boolean())]


class Reload(amp.Command):
    """Apply a new configuration (JSON of L{odin_ws.common.config.Config}) live."""

    arguments = [(b"config", BigBytes())]
    response = []
