"""
Server-Sent Events: the shard's C{text/event-stream} endpoint
(C{listen.sse_path}, docs/protocol.md "Server-Sent Events").

A stream arrives like a WebSocket: the parent places it and hands it over,
the shard's L{odin_ws.shard.protocol.ClientProtocol} reads its head through
the head gate, and when the head asks for C{listen.sse_path} hands the
connection to an L{SseStream} before Autobahn sees a byte (L{take_over}).
Everything a stream may be refused for is decided before its C{200}; then
its events come from L{odin_ws.shard.ssefeed}, built once for all streams.
"""

from __future__ import annotations

import dataclasses
import json
import random
import time
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from autobahn.websocket.protocol import WebSocketProtocol
from twisted.internet.protocol import Protocol

from odin_ws.common import metrics
from odin_ws.common.clientip import client_ip
from odin_ws.common.events import Event
from odin_ws.common.httphead import RequestHead
from odin_ws.common.logs import audit
from odin_ws.common.twisted_internals import replace_protocol
from odin_ws.shard import auth, messages, positions, recovery
from odin_ws.shard.autobahn_internals import retire_unopened
from odin_ws.shard.outbox import Outbox, OutboxHolder
from odin_ws.shard.ssefeed import PING, message, vector_text, with_id
from odin_ws.shard.subscriptions import BudgetExceeded

if TYPE_CHECKING:
    from odin_ws.common.settings import Settings
    from odin_ws.shard.history import History
    from odin_ws.shard.service import Shard

#: Close codes a stream reports in its C{close} event (docs/protocol.md).
CLOSE_RESTARTING = 4000
CLOSE_TOKEN_EXPIRED = 4001
CLOSE_SLOW_CONSUMER = 4008

#: Browsers come back after a drain within this many seconds (C{retry:}).
DRAIN_RETRY = (0.5, 5.0)

_OPEN = WebSocketProtocol.STATE_OPEN
_STATE_CLOSED = WebSocketProtocol.STATE_CLOSED   # closes the Outbox (OutboxHolder)


def take_over(ws: Any, head: RequestHead) -> SseStream:
    """
    The connection of C{ws} (a L{ClientProtocol} whose head gate just
    passed C{head}, path C{listen.sse_path}) becomes an event stream.
    """
    shard = ws.factory.shard
    retire_unopened(ws)
    stream = SseStream(shard, ws.adopted_at)
    shard.replace_client(ws, stream)
    replace_protocol(ws.transport, ws, stream)
    stream.start(head)
    return stream


class _Refused(Exception):
    def __init__(self, status: int, code: str, message: str, reason: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(code)
        self.status, self.code, self.message = status, code, message
        self.reason = reason or code
        self.headers = headers or {}


class SseStream(OutboxHolder, Protocol):
    """One SSE client of a shard, from its checked head to the end of its stream."""

    def __init__(self, shard: Shard, adopted_at: float = 0.0):
        self.shard = shard
        self.adopted_at = adopted_at
        self.client_ip = ""
        self.ip_counted = False
        self.grant: auth.Grant = auth.OPEN
        self.outbox: Outbox | None = None
        self._ws_state = _STATE_CLOSED
        self._allow_origin: str | None = None
        self._expiry_call = None
        self._closing = False
        #: The code of the close event we sent (None: the client left).
        self._close_code: int | None = None

    # -- the request

    def start(self, head: RequestHead) -> None:
        """Answer C{head}: refuse it with a JSON error, or open the stream."""
        try:
            msg, patterns = self._check(head)
            answer = self._answer(msg)
        except _Refused as e:
            self._refuse(e)
            return
        self._open(msg, patterns, answer)

    def _check(self, head: RequestHead) -> tuple[messages.Subscribe, list[tuple[str, str]]]:
        shard = self.shard
        settings = shard.settings
        limits = settings.limits
        self.client_ip = client_ip(getattr(self.transport.getPeer(), "host", ""),
                                   head.headers.get("x-forwarded-for"), limits.trusted_proxies)
        origin = head.headers.get("origin")
        origins = limits.allowed_origins
        allowed = not origins or origin in origins
        # Cross-origin pages read the stream (and errors) only with this.
        self._allow_origin = (origin if origins else "*") if allowed else None
        if head.method != "GET":
            # The parent answers this itself; with TLS it reads nothing.
            raise _Refused(405, "method_not_allowed", "a stream is opened with GET", "method")
        if not shard.accepting:
            raise _Refused(503, "unavailable", "server is shutting down", "draining",
                           {"Retry-After": str(settings.listen.retry_after)})
        if not allowed:
            raise _Refused(403, "origin_not_allowed", "origin not allowed", "origin")
        if not shard.ip_admit(self):
            raise _Refused(429, "too_many_connections",
                           "too many connections from this address", "per_ip")
        verifier = shard.verifier
        if verifier.enabled:
            sources = [s for s in verifier.sources if s != "subprotocol"]
            token = auth.token_from_request(head.headers, head.query, sources)
            try:
                self.grant = verifier.verify(token)
            except auth.AuthError as e:
                raise _Refused(401, "unauthorized", e.message, "auth_" + e.reason) from None
        last_event_id = head.headers.get("last-event-id") or None
        try:
            msg = messages.parse_url_subscribe(
                head.query, limits.max_channels_per_message, limits.max_channel_length,
                limits.max_positions, last_event_id)
        except messages.ClientError as e:
            raise _Refused(400, e.code, e.message) from None
        if msg is None:
            raise _Refused(400, messages.INVALID_MESSAGE, "channels is required")
        if msg.since is not None and "~" in (last_event_id or head.query.get("since", "")):
            msg = dataclasses.replace(msg, since=_complete(msg.since, shard.history,
                                                           settings.kafka.topics))
        denied = [c.name for c in msg.channels if not self.grant.allows(c.token, c.event_type)]
        if denied:
            raise _Refused(403, messages.FORBIDDEN, f"your token does not allow "
                           f"{denied[0][:100]}")
        if len(msg.channels) > limits.max_subscriptions:
            raise _Refused(400, messages.TOO_MANY_SUBSCRIPTIONS, f"a connection may hold "
                           f"at most {limits.max_subscriptions} subscriptions")
        patterns = [(c.token, c.event_type) for c in msg.channels]
        try:
            shard.streams.check_budget(patterns)
        except BudgetExceeded as e:
            raise _Refused(503, e.code, e.message, None,
                           {"Retry-After": str(settings.listen.retry_after)}) from None
        return msg, patterns

    def _answer(self, msg: messages.Subscribe) -> recovery.Answer | None:
        if msg.since is None and not msg.snapshot:
            return None
        shard = self.shard
        # Replayed events carry the vector up to each of them, starting from
        # the client's (docs/protocol.md "Event ids").
        vector = dict(msg.since or {})

        def encode(payload: bytes, event: Event) -> bytes:
            if event.envelope is payload:     # replayed, not a snapshot
                vector[(event.topic, event.partition)] = (event.epoch or "0", event.offset)
                return message(payload, vector_text(vector))
            return message(payload)

        # What the answer may take of the outbound buffer: the response head
        # and the ack (with the shard's positions) go first, and each event
        # carries a vector at most as long as the client's and the shard's.
        now = recovery.tops(shard.history)
        room = shard.settings.outbound.max_buffer_bytes - 512 - 2 * sum(len(p) + 3 for p in now)
        overhead = len(vector_text({**vector, **_vector_of(now)})) + 24
        try:
            return recovery.answer(shard.history, msg, shard.settings.kafka.topics,
                                   shard.settings.limits.max_snapshot_events, max(0, room),
                                   encode, overhead)
        except messages.ClientError as e:
            raise _Refused(400, e.code, e.message) from None

    def _refuse(self, e: _Refused) -> None:
        metrics.REJECTED.labels(status=str(e.status), reason=e.reason).inc()
        if e.code in messages.ERROR_CODES:
            metrics.CLIENT_ERRORS.labels(code=e.code).inc()
        audit.info("stream from {ip} rejected: {reason} ({status})",
                   ip=self.client_ip, reason=e.reason, status=e.status)
        body = json.dumps({"code": e.code, "message": e.message},
                          separators=(",", ":")).encode("ascii")
        headers = {"Content-Type": "application/json", "Content-Length": str(len(body)),
                   "Cache-Control": "no-store", "Connection": "close", **e.headers}
        self.transport.write(self._status(e.status, headers) + body)
        self.transport.loseConnection()

    def _status(self, status: int, headers: dict[str, str]) -> bytes:
        if self._allow_origin is not None:
            headers["Access-Control-Allow-Origin"] = self._allow_origin
            if self._allow_origin != "*":
                headers["Vary"] = "Origin"
        lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")

    def _open(self, msg: messages.Subscribe, patterns: list[tuple[str, str]],
              answer: recovery.Answer | None) -> None:
        shard = self.shard
        settings = shard.settings
        streams = shard.streams
        self.transport.write(self._status(200, {
            "Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no", "Connection": "close"}))
        self._ws_state = _OPEN
        self.outbox = Outbox(self, shard.fanout, shard.policy_for,
                             settings.outbound.max_buffer_bytes,
                             settings.outbound.disconnect_grace, self._slow_consumer)
        streams.opened(self)
        streams.index.add_all(self.outbox, patterns)
        shard.subscriptions_changed()
        metrics.CONNECTIONS_OPENED.inc()
        if self.adopted_at:
            metrics.HANDSHAKE_SECONDS.observe(time.monotonic() - self.adopted_at)
        self._schedule_expiry()
        # The ack, what recovery replays or the snapshot, then live: in this
        # reactor turn, as for a WebSocket subscribe (odin_ws/shard/recovery.py).
        tops = streams.tops.text()
        channels = [c.name for c in msg.channels]
        if answer is None:
            ack, frames = messages.ack("subscribed", channels), []
        else:
            ack, frames = answer.ack(channels, None), answer.frames
        if not frames:
            self.transport.write(message(ack, tops, "subscribed"))
            return
        self.transport.write(message(ack, None, "subscribed"))
        # The last message of the answer carries the shard's vector: once it
        # arrived the client has everything up to now.
        last, channel, event_type = frames[-1]
        frames = frames[:-1] + [(with_id(last, tops), channel, event_type)]
        shard.fanout.publish_run(frames, (self.outbox,))
        shard.fanout.flush()

    # -- the open stream

    def dataReceived(self, data: bytes) -> None:
        # A stream's client has nothing to say; whatever it sends is ignored.
        pass

    def ping(self) -> None:
        """Write a keepalive comment (C{keepalive.ping_interval})."""
        if self._ws_state == _OPEN and not self._closing:
            self.transport.write(PING)

    def reconfigure(self, settings: Settings) -> None:
        """Reloaded outbound limits reach the open stream's Outbox."""
        if self.outbox is not None:
            self.outbox.reconfigure(settings.outbound)

    def sendClose(self, code: int, reason: str) -> None:
        """
        End the stream with a C{close} event carrying C{code} (the name is
        the WebSocket protocol's: the shard's drain calls it on every client).
        """
        if self._closing or self.transport is None:
            return
        self._closing = True
        if self._ws_state == _OPEN:
            self._close_code = code
            self.state = _STATE_CLOSED
            data = json.dumps({"code": code, "reason": reason},
                              separators=(",", ":")).encode("ascii")
            retry = None
            if code == CLOSE_RESTARTING:
                # Not every browser at the same time: EventSource waits
                # retry ms and has no jitter of its own.
                retry = int(random.uniform(*DRAIN_RETRY) * 1000)
            self.transport.write(message(data, None, "close", retry))
        self.transport.loseConnection()

    def _slow_consumer(self) -> None:
        self.sendClose(CLOSE_SLOW_CONSUMER, "slow consumer: outbound buffer exceeded")

    def _schedule_expiry(self) -> None:
        if self.grant.expires is None:
            return
        delay = max(0.0, self.grant.expires + self.shard.verifier.leeway - time.time())
        self._expiry_call = self.shard.reactor.callLater(delay, self._expired)

    def _expired(self) -> None:
        self._expiry_call = None
        audit.info("stream from {ip} closed: token expired", ip=self.client_ip)
        self.sendClose(CLOSE_TOKEN_EXPIRED, "token expired; reconnect with a fresh token")

    def connectionLost(self, reason: Any = None) -> None:
        call, self._expiry_call = self._expiry_call, None
        if call is not None and call.active():
            call.cancel()
        shard = self.shard
        was_open = self.outbox is not None
        if was_open:
            shard.streams.closed(self)
            self.state = _STATE_CLOSED
            self.outbox = None
            shard.subscriptions_changed()
            code = self._close_code
            closed = "slow_consumer" if code == CLOSE_SLOW_CONSUMER else (
                "clean" if code is not None else "dropped")
            metrics.CONNECTIONS_CLOSED.labels(reason=closed,
                                              code=metrics.close_code_label(code)).inc()
        shard.connection_lost(self)


def _vector_of(texts: list[str]) -> messages.Since:
    out = {}
    for text in texts:
        topic, partition, epoch, offset = positions.decode(text)
        out[(topic, partition)] = (epoch, offset)
    return out


def _complete(since: messages.Since, history: History, topics: Any) -> messages.Since:
    """
    A vector names every partition its shard had delivered when the id was
    made; a partition missing from it had nothing delivered then, so all
    this shard retains of it may have been missed: recover it from its start.
    (If the client's shard had started after this one, that may also send
    events older than the client's subscription; never fewer than it missed.)
    """
    out = dict(since)
    for topic, partition, log in history.partitions():
        if (topic, partition) not in out and topic in topics:
            out[(topic, partition)] = (log.epoch or "0", log.floor)
    return out

