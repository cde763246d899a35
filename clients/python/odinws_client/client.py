"""
The asyncio client: one WebSocket to an odinws node, kept up by the
reconnect contract of docs/protocol.md (full-jitter backoff, the close-code
rules, a new token after 4001), every subscription asked for again after a
reconnect with recovery from its own positions, and the token refreshed
before it expires. The protocol itself is L{odinws_client.session}'s.
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from odinws_client import reconnect
from odinws_client.messages import ServerError, Stopped
from odinws_client.reconnect import Action
from odinws_client.session import Session
from odinws_client.subscription import Subscription
from odinws_client.tokens import TokenError, TokenProvider, fetch_token, refresh_delay, token_expiry

log = logging.getLogger("odinws_client")
# A library logs; the application decides where to (nothing by default).
log.addHandler(logging.NullHandler())


class ConnectionState(enum.Enum):
    CONNECTING = "connecting"
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"


@dataclass(frozen=True)
class StateChange:
    """What ``on_state`` gets: the new state, and why a connection ended."""

    state: ConnectionState
    #: The close code (1006 when the connection dropped or could not open).
    code: int | None = None
    #: The HTTP status when the node refused the upgrade.
    status: int | None = None
    reason: str = ""
    #: Seconds until the next attempt; None when the client will not retry.
    retry_in: float | None = None


@dataclass(frozen=True)
class _Ended:
    action: Action
    code: int | None = None
    status: int | None = None
    reason: str = ""
    retry_after: float = 0.0
    stable: bool = False


class _Hooks:
    """The session's view of its client (L{odinws_client.session.Hooks})."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def send(self, message: dict[str, Any]) -> None:
        self._client._send(message)

    def later(self, delay: float, call: Callable[[], None]) -> None:
        self._client._later(delay, call)

    def refreshed(self, token: str, expires: float | None) -> None:
        self._client._refreshed(token, expires)

    def error(self, error: ServerError) -> None:
        self._client._report(error)


class Client:
    """
    A connection to an odinws node that stays up::

        async with Client("wss://odin.example/ws", token_provider=get_jwt) as client:
            async for item in client.subscribe("odin.token.*.price", snapshot=True):
                ...

    ``token``: the JWT to connect with (sent as ``Authorization: Bearer``);
    ``token_provider``: a callable (sync or async) giving a fresh one, called
    before connecting when there is no valid token, after a 4001 and
    ``refresh_margin`` s before ``exp``. ``on_state`` gets each
    L{StateChange}, ``on_error`` each L{ServerError} (and
    ``get_token_failed``). Other keyword arguments go to
    ``websockets.asyncio.client.connect`` (``ssl=``, ``proxy=``, ...).
    """

    def __init__(self, url: str, *, token: str | None = None,
                 token_provider: TokenProvider | None = None,
                 backoff_base: float = reconnect.BACKOFF_BASE,
                 backoff_cap: float = reconnect.BACKOFF_CAP,
                 stable_after: float = 10.0, refresh_margin: float = 30.0,
                 positions_refresh: float = 60.0, max_channels_per_message: int = 100,
                 rate_limited_retry: float = 1.0, open_timeout: float = 10.0,
                 on_state: Callable[[StateChange], None] | None = None,
                 on_error: Callable[[ServerError], None] | None = None,
                 rand: Callable[[], float] = random.random, **connect_options: Any) -> None:
        self.url = url
        self.state = ConnectionState.DISCONNECTED
        self._token = token
        self._provider = token_provider
        self._need_token = False
        self._backoff = (backoff_base, backoff_cap)
        self._stable_after = stable_after
        self._refresh_margin = refresh_margin
        self._positions_refresh = positions_refresh
        self._open_timeout = open_timeout
        self._on_state = on_state
        self._on_error = on_error
        self._rand = rand
        self._connect_options = connect_options
        self._session = Session(_Hooks(self), max_channels_per_message, rate_limited_retry)
        self._attempt = 0
        self._task: asyncio.Task[None] | None = None
        self._ws: ClientConnection | None = None
        self._outbox: asyncio.Queue[str] | None = None
        self._timers: list[asyncio.TimerHandle] = []
        self._jobs: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()

    # -- public API

    @property
    def token(self) -> str | None:
        """The token the next connection presents."""
        return self._token

    def connect(self) -> None:
        """Open the connection, and keep it open until L{close} (call in a running loop)."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        """Close with 1000 and stop; every subscription's iterator ends."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        self._session.end(None)
        if self.state is not ConnectionState.DISCONNECTED:
            self._set_state(StateChange(ConnectionState.DISCONNECTED, 1000, reason="closed"))

    async def __aenter__(self) -> Client:
        self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def subscribe(self, pattern: str, *, snapshot: bool = False, recover: bool = True,
                  since: list[str] | None = None, delta: bool | str = False,
                  max_rate: float | None = None, filter: dict[str, Any] | None = None,
                  ) -> Subscription:
        """
        Receive the events of ``pattern`` (a channel, or one with ``*``
        segments): an async iterator of L{Event}s and L{Gap}s.

        ``snapshot``: first the latest event of each matching channel
        (``event.snapshot``), again after a reconnect that could not
        recover. ``recover`` (default): after a reconnect, get the events
        missed meanwhile, or a L{Gap} when the node cannot. ``since``:
        positions to start from (a stored ``sub.positions``).

        Server-side options (docs/protocol.md, "Subscription options"):
        ``delta`` lets the server send deltas, which the client applies
        (every L{Event} has whole ``data``, ``ts`` and ``pos``): ``True``
        asks for the smallest format, ``"compact"``; ``"merge-patch"`` for
        the other; ``max_rate``: at most so many
        events a second per channel, ending on the latest; ``filter``: only
        the events whose data passes it.
        """
        if not isinstance(pattern, str) or not pattern:
            raise ValueError("pattern must be a non-empty string")
        if since is not None and not all(isinstance(p, str) for p in since):
            raise ValueError("since must be a list of positions (strings)")
        options: dict[str, Any] = {}
        if delta:
            if delta is not True and delta not in ("compact", "merge-patch"):
                raise ValueError('delta must be True, False, "compact" or "merge-patch"')
            options["delta"] = "compact" if delta is True else delta
        if max_rate is not None:
            options["max_rate"] = max_rate
        if filter is not None:
            options["filter"] = filter
        sub = Subscription(pattern, snapshot=snapshot, recover=recover, since=since,
                           remove=self._session.remove, options=options)
        self._session.add(sub)
        self._wake.set()
        return sub

    async def ping(self, timeout: float = 10.0) -> float:
        """The round trip of an application-level ping, in seconds."""
        if not self._session.connected:
            raise ConnectionError("odinws: not connected")
        answer: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        sent = time.monotonic()

        def answered(msg: dict[str, Any]) -> None:
            if not answer.done():
                answer.set_result(msg)
        self._session.request({"type": "ping"}, answered)
        await asyncio.wait_for(answer, timeout)
        return time.monotonic() - sent

    # -- the connection loop

    async def _run(self) -> None:
        while True:
            ended = await self._connect_once()
            if ended.stable:
                self._attempt = 0
            if ended.action is Action.STOP:
                self._stop(ended)
                return
            if ended.action is Action.IDLE and not self._session.subscriptions:
                # The server's idle close: back when something is subscribed.
                self._wake.clear()
                self._set_state(StateChange(ConnectionState.DISCONNECTED, ended.code,
                                            reason=ended.reason))
                await self._wake.wait()
                continue
            if ended.action is Action.NEW_TOKEN:
                self._need_token = True
            delay = ended.retry_after + reconnect.backoff_delay(
                self._attempt, *self._backoff, rand=self._rand)
            self._attempt += 1
            self._set_state(StateChange(ConnectionState.DISCONNECTED, ended.code, ended.status,
                                        ended.reason, delay))
            await asyncio.sleep(delay)

    async def _connect_once(self) -> _Ended:
        self._set_state(StateChange(ConnectionState.CONNECTING))
        can_renew = self._provider is not None
        expiry = token_expiry(self._token)
        if self._provider is not None and (
                self._need_token or not self._token or (expiry is not None
                                                        and expiry <= time.time())):
            try:
                self._token = await fetch_token(self._provider)
            except TokenError as e:
                self._report(ServerError("get_token_failed", str(e)))
                return _Ended(Action.RECONNECT, reconnect.ABNORMAL, reason=str(e))
            self._need_token = False
        headers = {"Authorization": f"Bearer {self._token}"} if self._token else None
        try:
            ws = await connect(self.url, additional_headers=headers,
                               open_timeout=self._open_timeout, max_size=None,
                               **self._connect_options)
        except InvalidStatus as e:
            status = e.response.status_code
            return _Ended(reconnect.after_refusal(status, can_renew), status=status,
                          reason=f"HTTP {status} {e.response.reason_phrase}".strip(),
                          retry_after=reconnect.retry_after(e.response.headers.get("Retry-After")))
        # (Python 3.10's asyncio.TimeoutError is not yet the builtin one.)
        except (TimeoutError, asyncio.TimeoutError, OSError, InvalidHandshake) as e:  # noqa: UP041
            return _Ended(Action.RECONNECT, reconnect.ABNORMAL, reason=repr(e))
        opened = time.monotonic()
        try:
            await self._serve(ws)
        finally:
            self._drop()
            # A cancelled client (close()) says goodbye; no-op if already closed.
            await ws.close(1000, "closed by the client")
        code = int(ws.close_code or reconnect.ABNORMAL)
        return _Ended(reconnect.after_close(code, bool(self._session.subscriptions), can_renew),
                      code, reason=ws.close_reason or "",
                      stable=time.monotonic() - opened >= self._stable_after)

    async def _serve(self, ws: ClientConnection) -> None:
        """Read ``ws`` until it closes, feeding the session."""
        self._ws = ws
        self._outbox = asyncio.Queue()
        self._start(self._write(ws, self._outbox))
        self._set_state(StateChange(ConnectionState.CONNECTED))
        self._session.opened()
        self._schedule_refresh(token_expiry(self._token))
        if self._positions_refresh > 0:
            self._start(self._refresh_positions())
        try:
            async for raw in ws:
                if not isinstance(raw, str):
                    continue
                try:
                    msg = json.loads(raw)
                except ValueError:
                    log.warning("odinws: a message that is not JSON: %.200r", raw)
                    continue
                if isinstance(msg, dict):
                    self._session.received(msg)
                elif isinstance(msg, list):
                    self._session.received_compact(msg)
        except ConnectionClosed:
            pass

    def _drop(self) -> None:
        """Forget the connection: its timers, its writer, what was in flight."""
        self._session.lost()
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        for job in list(self._jobs):
            job.cancel()
        self._ws = None
        self._outbox = None

    def _stop(self, ended: _Ended) -> None:
        error = Stopped(ended.reason or f"closed with {ended.code}", ended.code, ended.status)
        log.warning("odinws: not reconnecting: %s", error)
        self._session.end(error)
        self._set_state(StateChange(ConnectionState.DISCONNECTED, ended.code, ended.status,
                                    ended.reason, None))

    async def _write(self, ws: ClientConnection, outbox: asyncio.Queue[str]) -> None:
        try:
            while True:
                await ws.send(await outbox.get())
        except ConnectionClosed:
            pass

    def _start(self, coro: Any) -> None:
        job: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._jobs.add(job)
        job.add_done_callback(self._jobs.discard)

    # -- the session's hooks

    def _send(self, message: dict[str, Any]) -> None:
        if self._outbox is not None:
            self._outbox.put_nowait(json.dumps(message))

    def _later(self, delay: float, call: Callable[[], None]) -> None:
        self._timers.append(asyncio.get_running_loop().call_later(delay, call))

    def _refreshed(self, token: str, expires: float | None) -> None:
        # Used for later connections once the server took it.
        self._token = token
        self._schedule_refresh(expires if expires is not None else token_expiry(token))

    def _report(self, error: ServerError) -> None:
        log.info("odinws: %s: %s", error.code, error.message)
        if self._on_error is not None:
            try:
                self._on_error(error)
            except Exception:
                log.exception("odinws: on_error raised")

    def _set_state(self, change: StateChange) -> None:
        self.state = change.state
        if self._on_state is not None:
            try:
                self._on_state(change)
            except Exception:
                log.exception("odinws: on_state raised")

    # -- timers

    def _schedule_refresh(self, exp: float | None) -> None:
        if self._provider is None or exp is None:
            return
        self._start(self._refresh_token(refresh_delay(exp, time.time(), self._refresh_margin)))

    async def _refresh_token(self, delay: float) -> None:
        """Get a new token ``delay`` s from now and send it with ``refresh``."""
        await asyncio.sleep(delay)
        assert self._provider is not None
        try:
            token = await fetch_token(self._provider)
        except TokenError as e:
            self._report(ServerError("get_token_failed", str(e), "refresh"))
            return
        self._session.request({"type": "refresh", "token": token}, lambda msg: None, token)

    async def _refresh_positions(self) -> None:
        while True:
            await asyncio.sleep(self._positions_refresh)
            self._session.refresh_positions()
