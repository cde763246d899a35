"""What a subscription's iterator yields, and the errors the client raises."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Event:
    """
    One event (docs/protocol.md, "event"): ``channel`` is concrete (never a
    pattern), ``data`` the JSON value as produced upstream, ``ts`` the event
    time in ms, ``pos`` its position (keep it; ``Subscription.positions`` does),
    ``snapshot`` true for the latest event of a channel sent at subscribe.
    """

    channel: str
    data: Any
    ts: int | None
    pos: str | None
    snapshot: bool = False
    #: The message as received, for fields this version does not know.
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


def event_of(msg: dict[str, Any]) -> Event:
    """The L{Event} of an ``event`` message (made whole already)."""
    ts = msg.get("ts")
    pos = msg.get("pos")
    return Event(str(msg.get("channel")), msg.get("data"),
                 ts if isinstance(ts, int) else None,
                 pos if isinstance(pos, str) else None,
                 msg.get("snapshot") is True, msg)


@dataclass(frozen=True)
class Gap:
    """
    A resubscription could not recover what was missed (``recovered:
    false``, after a reconnect or a ``gap`` notice of the node), or a gap
    notice named a stream that cannot be recovered: events may be missing
    before the ones that follow, so refetch the state from your system of
    record. ``reason`` is the server's
    (``too_old``, ``not_loaded``, ``ahead``, ``other_epoch``, ``unknown_partition``,
    ``too_large``) or the code of refused positions (``invalid_position``,
    ``unknown_position``, ``too_many_positions``). ``snapshot``: how many
    snapshot events follow (a subscription with ``snapshot=True``).

    ``undecodable``: the node could not decode one record of ``channel``
    (docs/protocol.md, "Records that cannot be decoded"), at ``pos``, in
    its place among the events; nothing can recover it (the client does
    not try): refetch that channel's state if it matters.
    """

    reason: str
    snapshot: int = 0
    channel: str | None = None
    pos: str | None = None


@dataclass(frozen=True)
class ServerError:
    """An ``error`` message of the server (docs/protocol.md, "error")."""

    code: str
    message: str
    #: The type of the request it answers ("subscribe", "refresh", ...), if known.
    request: str | None = None
    #: The channels of that request, if any.
    channels: tuple[str, ...] = ()


class SubscriptionFailed(Exception):
    """The server refused the subscription (``error`` says why); it is not retried."""

    def __init__(self, error: ServerError) -> None:
        super().__init__(f"{error.code}: {error.message}")
        self.error = error


class Stopped(Exception):
    """
    The client stopped reconnecting: the server closed with a code (or
    answered the upgrade with an HTTP status) that says retrying would fail
    the same way (docs/protocol.md, "Close codes").
    """

    def __init__(self, reason: str, code: int | None = None, status: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        #: The WebSocket close code, if the connection was open.
        self.code = code
        #: The HTTP status of a refused upgrade, if it was refused.
        self.status = status
