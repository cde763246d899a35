"""
The protocol core of one client, without I/O: it turns subscriptions into
``subscribe`` messages and the server's messages into the items of each
subscription (docs/protocol.md, "Positions, recovery and snapshots"). The
L{odinws_client.client.Client} feeds it what the socket reads and sends
what it asks to send; tests feed it messages by hand.

Ordering facts it relies on, and the ones it must not:

* Over one connection, events of one partition arrive in position order,
  and a subscribe's ack is followed by its replay (or snapshot), then live
  events of it.
* But a node writes an ack ahead of events it queued before (another
  subscription's live events, another subscribe's replay). So an ack's
  ``positions`` (the tops) count only once an event past them came (or at
  the next ack with no event between), and a replay's events, which copies
  brought by other subscriptions' traffic may precede, are collected and
  handed over in order once all ``replayed`` of them are here (or an event
  past the tops shows they are).
* Each subscription drops an event at or before the last position it holds
  of that partition: a node that is behind, an overlapping pattern or
  another subscription's replay may bring it again.
* A ``gap`` message (docs/protocol.md, "Slow clients: catch-up and gaps")
  names streams whose events the node gave up on, and the position after
  which to recover them; the stream goes on live. The recovering
  subscriptions resubscribe with those positions, and hold that stream's
  events from the notice on (an open L{Replay}: its tops are the ack's),
  so the recovered events and the live ones are handed over in order.
  Two reasons are not recovered: ``conflated`` (skipped by design) and
  ``undecodable`` (a record the node could not decode: nothing can bring
  it back). The latter sits at the record's position, so it goes through
  the same ordering as an event (held by a replay, dropped if already
  seen) and reaches the subscriptions of its channel as a L{Gap} item; its
  position counts as seen, so no recovery asks for it again.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from odinws_client.deltas import Deltas
from odinws_client.inflight import Replay, Request, SnapshotWait
from odinws_client.messages import Gap, ServerError, SubscriptionFailed
from odinws_client.positions import Position, PositionMap
from odinws_client.router import Router
from odinws_client.subscription import State, Subscription

#: A subscribe refused for its positions: start over from the current ones.
POSITION_ERRORS = frozenset({"invalid_position", "unknown_position", "too_many_positions"})


class Hooks(Protocol):
    """What the session tells its client."""

    def send(self, message: dict[str, Any]) -> None:
        """Send ``message`` on the current connection."""

    def later(self, delay: float, call: Callable[[], None]) -> None:
        """Call ``call`` after ``delay`` s unless the connection is lost first."""

    def refreshed(self, token: str, expires: float | None) -> None:
        """The server took ``token`` (expiring at ``expires``)."""

    def error(self, error: ServerError) -> None:
        """The server answered a request with an error."""


class Session:
    """The subscriptions of one client and the routing of what the server sends."""

    def __init__(self, hooks: Hooks, max_channels_per_message: int = 100,
                 rate_limited_retry: float = 1.0) -> None:
        self._hooks = hooks
        self._max_channels = max_channels_per_message
        self._rate_limited_retry = rate_limited_retry
        self._subs: dict[str, Subscription] = {}
        self._ids = itertools.count(1)
        self._pending: dict[int, Request] = {}
        #: Events to subscriptions, in order (odinws_client/router.py).
        self._route = Router(self._subs)
        #: What this connection's deltas are made whole against.
        self._deltas = Deltas(hooks.error)
        self.connected = False

    @property
    def subscriptions(self) -> list[Subscription]:
        return list(self._subs.values())

    # -- what the client asks

    def add(self, sub: Subscription) -> None:
        """Hold ``sub`` (from now on, and on every later connection)."""
        if sub.pattern in self._subs:
            raise ValueError(f"already subscribed to {sub.pattern!r}: iterate that subscription")
        self._subs[sub.pattern] = sub
        if self.connected:
            self._subscribe([sub])

    def remove(self, sub: Subscription) -> None:
        if self._subs.get(sub.pattern) is not sub:
            return
        del self._subs[sub.pattern]
        sub._set_state(State.UNSUBSCRIBED)
        sub._end(None)
        if self.connected:
            self._send({"type": "unsubscribe", "channels": [sub.pattern]}, Request("unsubscribe"))

    def opened(self) -> None:
        """A connection opened: subscriptions belong to a connection, ask for all again."""
        self.connected = True
        if self._subs:
            self._subscribe(list(self._subs.values()))

    def lost(self) -> None:
        """The connection is gone: what was in flight is forgotten, subscriptions wait."""
        self.connected = False
        self._pending.clear()
        self._route.clear()
        self._deltas.clear()
        for sub in self._subs.values():
            sub._live = False
            sub._replay = None
            sub._tops_seen = -1  # tops of a lost connection only fill in since
            sub._set_state(State.PENDING)

    def end(self, error: BaseException | None) -> None:
        """The client stops: every iterator ends (raising ``error`` if given)."""
        for sub in self._subs.values():
            sub._end(error)
        self._subs.clear()

    def refresh_positions(self) -> None:
        """
        Ask for the current positions (``since: []`` of the held channels:
        nothing replayed or subscribed twice). A partition where a
        subscription gets no events keeps the position of its first
        subscribe, which the node's history forgets after ``history.max_age``;
        recovering from it would fail (too_old) though nothing was missed.
        """
        held = [s for s in self._subs.values() if s._live and s.recover]
        self._request(held, {"since": []}, refresh=True)

    def request(self, message: dict[str, Any], answered: Callable[[dict[str, Any]], None],
                token: str | None = None) -> None:
        """Send a ``ping`` or ``refresh``; ``answered`` gets the reply (or the error)."""
        self._send(message, Request(message["type"], token=token, answered=answered))

    # -- what the server sends

    def received(self, msg: dict[str, Any]) -> None:
        if msg.get("type") == "event":
            whole = self._deltas.whole(msg, any(s.options.get("delta")
                                                for s in self._subs.values()))
            if whole is not None:
                self._route.event(whole)
            return
        req = self._pending.pop(msg["id"], None) if isinstance(msg.get("id"), int) else None
        kind = msg.get("type")
        if kind == "subscribed" and req is not None:
            self._acked(msg, req)
        elif kind == "error":
            self._failed(msg, req)
        elif kind == "refreshed" and req is not None:
            self._refreshed(msg, req)
        elif kind == "pong" and req is not None and req.answered is not None:
            req.answered(msg)
        elif kind == "gap":
            self._gap(msg)

    def received_compact(self, frame: list[Any]) -> None:
        """A compact delta (docs/protocol.md, "Compact deltas"): the event it stands for."""
        msg = self._deltas.compact(frame)
        if msg is not None:
            self._route.event(msg)

    def _gap(self, msg: dict[str, Any]) -> None:
        """
        The node gave up on events of some streams: recover them with the
        positions it gives (conflation skips by design: nothing to recover;
        a stream without a position cannot be recovered: a L{Gap} item).
        """
        reason = str(msg.get("reason") or "unknown")
        if reason == "conflated":
            return
        if reason == "undecodable" and self._hole(msg):
            return
        streams = msg.get("streams")
        named = list(streams.values()) if isinstance(streams, dict) else []
        since = [p for p in named if isinstance(p, str) and Position.parse(p) is not None]
        subs = [s for s in self._subs.values() if s._live and s.recover]
        if len(since) < len(named) or not since:
            for sub in self._subs.values():
                if sub._live:
                    sub._push(Gap(reason))
        if not since or not subs:
            return
        replay = Replay(subs, PositionMap(since), None, 1 << 62)
        for sub in subs:
            if sub._replay is not None:
                self._route.end_replay(sub._replay)
            sub._replay = replay
        self._route.replays.append(replay)
        self._request(subs, {"since": since}, gap=replay)

    def _hole(self, msg: dict[str, Any]) -> bool:
        """
        A record of a channel the node could not decode, at its position:
        ordered like an event, a L{Gap} item for the channel's subscriptions.
        False when it names no channel and one position (then it is an
        unrecoverable gap like any other).
        """
        streams = msg.get("streams")
        named = list(streams.values()) if isinstance(streams, dict) else []
        if len(named) != 1 or not isinstance(msg.get("channel"), str) \
                or Position.parse(named[0]) is None:
            return False
        self._route.event({**msg, "pos": named[0]})
        return True

    # -- subscribing

    def _send(self, message: dict[str, Any], request: Request) -> None:
        ident = next(self._ids)
        self._pending[ident] = request
        self._hooks.send({**message, "id": ident})

    def _request(self, subs: list[Subscription], fields: dict[str, Any],
                 refresh: bool = False, gap: Replay | None = None) -> None:
        """
        Subscribe ``subs`` with ``fields``, at most L{_max_channels} per
        message, each with its server-side options (the server holds a
        channel with one set: every subscribe of it says them again).
        """
        groups: dict[str, list[Subscription]] = {}
        for sub in subs:
            groups.setdefault(json.dumps(sub.options, sort_keys=True), []).append(sub)
        for same in groups.values():
            options = same[0].options
            for i in range(0, len(same), self._max_channels):
                chunk = same[i:i + self._max_channels]
                self._send({"type": "subscribe", "channels": [s.pattern for s in chunk],
                            **fields, **options},
                           Request("subscribe", chunk, fields.get("since"),
                                   bool(fields.get("snapshot")), refresh, gap=gap))

    def _subscribe(self, subs: Iterable[Subscription]) -> None:
        """
        Subscribe ``subs`` on this connection; those asking the same (no
        recovery; recovery from the same positions; snapshot or not) share a
        message. A subscription with no positions yet asks for the current
        ones (``since: []``): with a snapshot, the server sends it too.
        """
        groups: dict[str, tuple[dict[str, Any], list[Subscription]]] = {}
        for sub in subs:
            fields: dict[str, Any] = {"snapshot": True} if sub.snapshot else {}
            if sub.recover:
                fields["since"] = sub.positions
            key = json.dumps(fields, sort_keys=True)
            groups.setdefault(key, (fields, []))[1].append(sub)
        for fields, members in groups.values():
            self._request(members, fields)

    def _acked(self, msg: dict[str, Any], req: Request) -> None:
        subs = self._route.current(req.subs)
        for sub in subs:
            sub._live = True
            sub._set_state(State.SUBSCRIBED)
        recovered = msg.get("recovered")
        if req.gap is not None and isinstance(recovered, bool):
            self._gap_acked(req.gap, recovered, msg)
            return
        if req.since is not None and isinstance(recovered, bool):
            tops = PositionMap(msg.get("positions") or ())
            if not recovered:
                for sub in subs:
                    sub._last.keep_ahead_of(tops)
            for sub in subs:
                self._route.pend_tops(sub, tops)
            replayed = _count(msg.get("replayed"))
            if recovered and replayed > 0:
                replay = Replay(subs, PositionMap(req.since), tops, replayed)
                for sub in subs:
                    sub._replay = replay
                self._route.replays.append(replay)
            if req.since and not recovered:
                gap = Gap(str(msg.get("reason") or "unknown"), _count(msg.get("snapshot")))
                for sub in subs:
                    sub._push(gap)
        snapshot = _count(msg.get("snapshot"))
        if snapshot and req.snapshot:
            self._route.snapshots.append(SnapshotWait([s for s in subs if s.snapshot], snapshot))

    def _gap_acked(self, replay: Replay, recovered: bool, msg: dict[str, Any]) -> None:
        """
        The ack of a gap's recovery: recovered, the held events are the
        replay's first ones, complete once ``replayed`` are here (or an
        event past the tops came); not, they go out now after a L{Gap}.
        """
        if replay not in self._route.replays:
            return
        if recovered:
            replay.tops = PositionMap(msg.get("positions") or ())
            replay.left = _count(msg.get("replayed"))
            held = sum(1 for text in replay.buffer if replay.holds(Position.parse(text)))
            if held >= replay.left:
                self._route.end_replay(replay)
            return
        gap = Gap(str(msg.get("reason") or "unknown"))
        for sub in self._route.current(replay.subs):
            sub._push(gap)
        self._route.end_replay(replay)

    def _failed(self, msg: dict[str, Any], req: Request | None) -> None:
        error = ServerError(str(msg.get("code")), str(msg.get("message", "")),
                            req.type if req else None,
                            tuple(s.pattern for s in req.subs) if req else ())
        if req is not None and req.answered is not None:
            req.answered(msg)
        if req is None or req.type != "subscribe":
            self._hooks.error(error)
            return
        live = self._route.current(req.subs)
        if req.refresh:
            return  # asking for positions: the next time will do
        if error.code == "rate_limited":
            # The server dropped the request: send it again, later.
            self._hooks.error(error)
            self._hooks.later(self._rate_limited_retry,
                              lambda: self._subscribe(self._route.current(live)))
            return
        if req.since and error.code in POSITION_ERRORS:
            # Positions this node cannot use (another cluster, a topic gone):
            # not recovered; start again from the current positions.
            for sub in live:
                sub._last.clear()
                sub._tops = None
                sub._push(Gap(error.code))
            self._subscribe(live)
            return
        if len(live) > 1:
            # All or nothing: one bad channel in a batch must not sink the
            # others. Ask for each alone; each refusal is reported then.
            for sub in live:
                self._subscribe([sub])
            return
        self._hooks.error(error)
        for sub in live:
            self._refuse(sub, error)

    def _refuse(self, sub: Subscription, error: ServerError) -> None:
        del self._subs[sub.pattern]
        sub._set_state(State.FAILED, error)
        sub._end(SubscriptionFailed(error))

    def _refreshed(self, msg: dict[str, Any], req: Request) -> None:
        expires = msg.get("expires")
        if req.token is not None:
            self._hooks.refreshed(req.token, float(expires)
                                  if isinstance(expires, (int, float)) else None)
        dropped = msg.get("unsubscribed") or []
        if dropped:
            # Channels the new token no longer grants: the server dropped them.
            error = ServerError("forbidden", "no longer granted by the refreshed token",
                                "refresh", tuple(dropped))
            self._hooks.error(error)
            for pattern in dropped:
                sub = self._subs.get(pattern)
                if sub is not None:
                    self._refuse(sub, error)
        if req.answered is not None:
            req.answered(msg)

    # -- events


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0
