"""
One ``Client.subscribe()``: an async iterator of L{Event}s and L{Gap}s, and
the positions it recovers from. The routing that fills it is the
L{odinws_client.session.Session}'s; this object holds what is the
subscription's own.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from odinws_client.messages import Event, Gap, ServerError, SubscriptionFailed
from odinws_client.positions import PositionMap

if TYPE_CHECKING:
    from odinws_client.inflight import Replay

Item = Event | Gap


class State(enum.Enum):
    """Where a subscription is."""

    #: Waiting for the server's ack (again after each reconnect).
    PENDING = "pending"
    SUBSCRIBED = "subscribed"
    #: Refused by the server (``Subscription.error``); not retried.
    FAILED = "failed"
    UNSUBSCRIBED = "unsubscribed"


class _End:
    """The last item of an iterator: it stops, or raises ``error``."""

    def __init__(self, error: BaseException | None) -> None:
        self.error = error


class Subscription:
    """
    ``async for item in sub``: each item is an L{Event} (in position order
    per partition, each once) or a L{Gap} (a reconnect could not recover
    what was missed: refetch your state). The iterator ends after
    L{unsubscribe} or ``Client.close()``, and raises L{SubscriptionFailed}
    when the server refuses the subscription, L{Stopped} when the client
    stops reconnecting.
    """

    def __init__(self, pattern: str, *, snapshot: bool, recover: bool,
                 since: list[str] | None, remove: Callable[[Subscription], None],
                 options: dict[str, Any] | None = None) -> None:
        self.pattern = pattern
        self.snapshot = snapshot
        self.recover = recover
        #: What the server applies (docs/protocol.md, "Subscription options"):
        #: ``delta``, ``max_rate``, ``filter``, as the subscribe message carries them.
        self.options: dict[str, Any] = dict(options or {})
        self.state = State.PENDING
        self.error: ServerError | None = None
        self._remove = remove
        self._items: asyncio.Queue[Item | _End] = asyncio.Queue()
        self._ended = False
        #: Set while acknowledged, and for good once failed or unsubscribed.
        self._settled = asyncio.Event()
        # Routing state, owned by the session:
        self._segments = pattern.split(".")
        #: The last position delivered per partition.
        self._last = PositionMap(since or ())
        #: Positions an ack listed, counted once an event past them came.
        self._tops: PositionMap | None = None
        self._tops_seen = -1
        #: True once the server acknowledged it on the current connection.
        self._live = False
        self._replay: Replay | None = None

    @property
    def positions(self) -> list[str]:
        """
        The last position seen per partition (sorted): the ``since`` of the
        next recovery. Store it to recover after a restart:
        ``client.subscribe(pattern, since=stored)``.
        """
        since = self._last.copy()
        if self._tops is not None:
            since.fill(self._tops)
        return since.texts()

    def unsubscribe(self) -> None:
        """Stop receiving events; the iterator ends after what is queued."""
        if self.state in (State.UNSUBSCRIBED, State.FAILED):
            return
        self._remove(self)

    async def wait_subscribed(self) -> None:
        """Wait until the server acknowledged the subscription (L{SubscriptionFailed} if it refused it)."""
        await self._settled.wait()
        if self.state is State.FAILED and self.error is not None:
            raise SubscriptionFailed(self.error)

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Item:
        item = await self._items.get()
        if isinstance(item, _End):
            self._items.put_nowait(item)  # later calls end too
            if item.error is not None:
                raise item.error
            raise StopAsyncIteration
        return item

    def matches(self, segments: list[str]) -> bool:
        """Does a channel (split at dots) match this subscription's pattern?"""
        mine = self._segments
        return len(mine) == len(segments) and all(
            p == "*" or p == c for p, c in zip(mine, segments))

    # -- the session's side

    def _set_state(self, state: State, error: ServerError | None = None) -> None:
        if self.state in (State.UNSUBSCRIBED, State.FAILED) or self.state is state:
            return
        self.state = state
        self.error = error
        if state is State.PENDING:
            self._settled.clear()
        else:
            self._settled.set()

    def _push(self, item: Item) -> None:
        if not self._ended:
            self._items.put_nowait(item)

    def _end(self, error: BaseException | None) -> None:
        if not self._ended:
            self._ended = True
            self._items.put_nowait(_End(error))
