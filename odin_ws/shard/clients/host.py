"""
What a client session (L{odin_ws.shard.clients.session.Session}) needs of
the shard it lives in (L{ClientHost}) and of the connection that carries it
(L{ClientTransport}): the contracts between the client rules and the rest,
kept apart from the rules themselves. The shard implements the first by
handing each call to its owner; each transport (WebSocket, Server-Sent
Events) the second.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from odin_ws.common.settings import Settings
    from odin_ws.shard.clients import auth
    from odin_ws.shard.clients.options import SubscriptionOptions
    from odin_ws.shard.clients.recoveryhold import RecoveryHold
    from odin_ws.shard.delivery.behind import Backlog
    from odin_ws.shard.delivery.fanout import Fanout
    from odin_ws.shard.delivery.outbox import Outbox
    from odin_ws.shard.delivery.subscriptions import SubscriptionIndex
    from odin_ws.shard.history.store import History


class ClientHost(Protocol):
    """What a session needs of its shard (the shard's other members are not its business)."""

    @property
    def settings(self) -> Settings: ...

    @property
    def verifier(self) -> auth.Verifier: ...

    @property
    def reactor(self) -> Any: ...

    @property
    def history(self) -> History: ...

    @property
    def backlog(self) -> Backlog: ...

    @property
    def fanout(self) -> Fanout: ...

    @property
    def subscriptions(self) -> SubscriptionIndex: ...

    @property
    def recoveries(self) -> RecoveryHold: ...

    @property
    def options(self) -> SubscriptionOptions: ...

    def policy_for(self, event_type: str) -> str: ...

    def subscriptions_changed(self) -> None: ...

    def recovering(self, outbox: Outbox) -> None:
        """
        C{outbox}'s connection recovers from positions in this turn: a gap
        notice it was sent is answered; later ones are news to it.
        """

    def admit_ip(self, ip: str) -> bool: ...

    def release_ip(self, ip: str) -> None: ...


class ClientTransport(Protocol):
    """What a session needs of the connection that carries it."""

    outbox: Outbox | None

    @property
    def transport(self) -> Any: ...

    def reply(self, payload: bytes) -> None:
        """Send one JSON message of the control protocol, behind the events queued."""

    def close(self, code: int, reason: str) -> None:
        """End the connection with C{code} (docs/protocol.md's close codes)."""
