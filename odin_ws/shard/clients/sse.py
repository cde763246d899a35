"""
Server-Sent Events: the shard's C{text/event-stream} endpoint
(C{listen.sse_path}, docs/protocol.md "Server-Sent Events").

A stream arrives like a WebSocket: the parent places it and hands it over,
the shard's L{odin_ws.shard.clients.websocket.ClientProtocol} reads its head through
the head gate, and when the head asks for C{listen.sse_path} hands the
connection to an L{SseStream} before Autobahn sees a byte (L{take_over}).
Everything a stream may be refused for is decided before its C{200}; then
its events come from L{odin_ws.shard.delivery.ssefeed}, built once for all streams.
"""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Callable
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, Protocol

from autobahn.websocket.protocol import WebSocketProtocol
from twisted.internet.protocol import Protocol as TwistedProtocol

from odin_ws.common.events import Event
from odin_ws.common.httphead import RequestHead
from odin_ws.common.settings import Settings
from odin_ws.common.twisted_internals import replace_protocol
from odin_ws.shard.clients import messages, recovery
from odin_ws.shard.clients.autobahn_internals import retire_unopened
from odin_ws.shard.clients.closecodes import (
    CLOSE_POLICY,
    CLOSE_RESTARTING,
    CLOSE_SLOW_CONSUMER,
    count_closed,
)
from odin_ws.shard.clients.host import ClientHost
from odin_ws.shard.clients.refusal import Refused
from odin_ws.shard.clients.session import Session
from odin_ws.shard.delivery.gaps import count_told
from odin_ws.shard.delivery.outbox import Outbox, OutboxHolder
from odin_ws.shard.delivery.pingwheel import NOT_DUE
from odin_ws.shard.delivery.ssefeed import (
    PING,
    DropNotices,
    Streams,
    message,
    vector_text,
    with_id,
)
from odin_ws.shard.delivery.subscriptions import BudgetExceeded
from odin_ws.shard.delivery.variants import PLAIN, Variant
from odin_ws.shard.history import positions
from odin_ws.shard.history.holes import UNDECODABLE, is_hole

if TYPE_CHECKING:
    from odin_ws.shard.clients.recoveryhold import HeldRecovery
    from odin_ws.shard.history.store import History

#: Browsers come back after a drain within this many seconds (C{retry:}).
DRAIN_RETRY = (0.5, 5.0)

_OPEN = WebSocketProtocol.STATE_OPEN
_STATE_CLOSED = WebSocketProtocol.STATE_CLOSED   # closes the Outbox (OutboxHolder)


class StreamHost(ClientHost, Protocol):
    """What an event stream needs of its shard, besides what its session needs."""

    @property
    def accepting(self) -> bool: ...

    @property
    def streams(self) -> Streams: ...

    def replace_client(self, old: Any, new: Any) -> None: ...

    def connection_lost(self, proto: Any) -> None: ...


def take_over(ws: Any, host: StreamHost, head: RequestHead) -> SseStream:
    """
    The connection of C{ws} (a L{ClientProtocol} whose head gate just
    passed C{head}, path C{listen.sse_path}) becomes an event stream.
    """
    retire_unopened(ws)
    stream = SseStream(host, ws.adopted_at)
    host.replace_client(ws, stream)
    replace_protocol(ws.transport, ws, stream)
    stream.start(head)
    return stream


class SseStream(OutboxHolder, TwistedProtocol):
    """
    One SSE client of a shard, from its checked head to the end of its
    stream: an adapter between the stream's HTTP and its L{Session}.
    """

    #: Twisted types it Optional; a stream is made on a live connection.
    transport: Any

    def __init__(self, host: StreamHost, adopted_at: float = 0.0):
        self.host = host
        self.adopted_at = adopted_at
        self.session = Session(host, self, "stream")
        self.outbox: Outbox | None = None
        self._ws_state = _STATE_CLOSED
        self._allow_origin: str | None = None
        self._closing = False
        #: The code of the close event we sent (None: the client left).
        self._close_code: int | None = None
        #: A recovery held before the stream opens; whether the client left.
        self._held: HeldRecovery | None = None
        self._gone = False
        #: The stream's subscription options (its filter held in the shard's pool).
        self._variant: Variant = PLAIN
        #: Where it waits in the shard's keepalive wheel (ssefeed.Streams.pings).
        self.ping_due = NOT_DUE

    # -- the request

    def start(self, head: RequestHead) -> None:
        """
        Answer C{head}: refuse it with a JSON error, or open the stream (once
        a recovery the shard cannot answer truly yet could be: see
        L{odin_ws.shard.clients.recoveryhold}).
        """
        try:
            msg, patterns = self._check(head)
        except Refused as e:
            self._refuse(e)
            return
        recoveries = self.host.recoveries
        if msg.since and recoveries.waits(msg.since):
            self._held = recoveries.hold(msg.since, lambda: self._respond(msg, patterns))
            return
        self._respond(msg, patterns)

    def _respond(self, msg: messages.Subscribe, patterns: list[tuple[str, str]]) -> None:
        self._held = None
        if self._gone:
            return
        options = self.host.options
        try:
            # The stream's options: its filter taken from the shard's pool
            # (server_filter_limit refuses the stream before its 200).
            self._variant = options.variant(msg, self)
        except messages.ClientError as e:
            self._refuse(Refused(400, e.code, e.message, e.code))
            return
        try:
            answer = self._answer(msg, options.keeps(self._variant))
        except Refused as e:
            options.release(self._variant)
            self._variant = PLAIN
            self._refuse(e)
            return
        self._open(msg, patterns, answer)

    def _check(self, head: RequestHead) -> tuple[messages.Subscribe, list[tuple[str, str]]]:
        host = self.host
        session = self.session
        settings = host.settings
        session.identify(getattr(self.transport.getPeer(), "host", ""), head.headers)
        origin = head.headers.get("origin")
        allowed = session.origin_allowed(origin)
        # Cross-origin pages read the stream (and errors) only with this.
        self._allow_origin = (origin if settings.limits.allowed_origins else "*") \
            if allowed else None
        retry_after = {"Retry-After": str(settings.listen.retry_after)}
        if head.method != "GET":
            # The parent answers this itself; with TLS it reads nothing.
            raise Refused(405, "method", "a stream is opened with GET", "method_not_allowed")
        if not host.accepting:
            raise Refused(503, "draining", "server is shutting down", "unavailable", retry_after)
        sources = [s for s in host.verifier.sources if s != "subprotocol"]
        session.admit(head.headers, head.query, sources)
        last_event_id = head.headers.get("last-event-id") or None
        msg = session.url_subscribe(head.query, last_event_id)
        if msg is None:
            raise Refused(400, messages.INVALID_MESSAGE, "channels is required",
                          messages.INVALID_MESSAGE)
        if msg.delta:
            # An SSE message is built once for every stream, with the shard's
            # vector as its id; deltas are a WebSocket feature.
            raise Refused(400, messages.BAD_DELTA, "deltas are not sent over Server-Sent "
                          "Events; use a WebSocket, or leave delta out", messages.BAD_DELTA)
        if msg.since is not None and "~" in (last_event_id or head.query.get("since", "")):
            msg = dataclasses.replace(msg, since=_complete(msg.since, host.history,
                                                           settings.kafka.topics))
        patterns = [(c.token, c.event_type) for c in msg.channels]
        try:
            host.streams.index.check_room(patterns, session.client_ip)
        except BudgetExceeded as e:
            raise Refused(503, e.code, e.message, e.code, retry_after) from None
        return msg, patterns

    def _answer(self, msg: messages.Subscribe,
                keep: Callable[[Event], bool] | None = None) -> recovery.Answer | None:
        if msg.since is None and not msg.snapshot:
            return None
        host = self.host
        # Replayed events carry the vector up to each of them, starting from
        # the client's (docs/protocol.md "Event ids").
        vector = dict(msg.since or {})

        def encode(payload: bytes, event: Event) -> bytes:
            name = "gap" if is_hole(event) else None   # an undecodable record
            if event.envelope is payload:     # replayed, not a snapshot
                vector[(event.topic, event.partition)] = (event.epoch or "0", event.offset)
                return message(payload, vector_text(vector), name)
            return message(payload, event=name)

        # What the answer may take of the outbound buffer: the response head
        # and the ack (with the shard's positions) go first, and each event
        # carries a vector at most as long as the client's and the shard's.
        now = recovery.tops(host.history)
        room = host.settings.outbound.max_buffer_bytes - 512 - 2 * sum(len(p) + 3 for p in now)
        overhead = len(vector_text({**vector, **_vector_of(now)})) + 24
        try:
            return self.session.answer(msg, max(0, room), encode, overhead, keep=keep)
        except messages.ClientError as e:
            raise Refused(400, e.code, e.message, e.code) from None

    def _refuse(self, e: Refused) -> None:
        self.session.refused(e)
        body = e.body()
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
        host = self.host
        streams = host.streams
        self.transport.write(self._status(200, {
            "Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no", "Connection": "close"}))
        self._ws_state = _OPEN
        outbox = self.session.open(self.adopted_at, self._slow_consumer, talks=False)
        outbox.drops = DropNotices(streams)
        streams.opened(self)
        if self._variant.plain:
            streams.index.add_all(outbox, patterns, self.session.client_ip)
        else:
            streams.variants.add_all(outbox, patterns, self._variant, self.session.client_ip)
        self.session.subscribed()
        # The ack, what recovery replays or the snapshot, then live: in this
        # reactor turn, as for a WebSocket subscribe (odin_ws/shard/clients/recovery.py).
        tops = streams.tops.text()  # type: ignore[union-attr]  # opened() just made them
        channels = [c.name for c in msg.channels]
        if answer is None:
            ack, frames = messages.ack("subscribed", channels), []
        else:
            ack, frames = answer.ack(channels, None), answer.frames
        if not frames:
            self.transport.write(message(ack, tops, "subscribed"))
            return
        self.transport.write(message(ack, None, "subscribed"))
        if answer is not None:
            count_told(host.fanout.stats, UNDECODABLE, answer.holes)
        # The last message of the answer carries the shard's vector: once it
        # arrived the client has everything up to now.
        last, channel, event_type = frames[-1]
        frames = frames[:-1] + [(with_id(last, tops), channel, event_type)]
        host.fanout.publish_run(frames, (outbox,))
        host.fanout.flush()

    # -- the open stream

    def dataReceived(self, data: bytes) -> None:
        # A stream's client has nothing to say. Reading and discarding an
        # upload cost a shard 15 GiB in 15 s (issue 23, L2): the first byte
        # ends the stream, and the connection is read no more.
        if data:
            self.close(CLOSE_POLICY, "an event stream takes no upload")

    def ping(self) -> None:
        """Write a keepalive comment (C{keepalive.ping_interval})."""
        if self._ws_state == _OPEN and not self._closing:
            self.transport.write(PING)

    def reconfigure(self, settings: Settings) -> None:
        """Reloaded outbound limits reach the open stream's Outbox."""
        self.session.reconfigure(settings)

    def reply(self, payload: bytes) -> None:
        """A control message of the session, as an SSE message of its own."""
        if self._ws_state == _OPEN and not self._closing:
            self.transport.write(message(payload))

    def close(self, code: int, reason: str) -> None:
        """
        End the stream with a C{close} event carrying C{code} (the shard's
        drain and the session call it on every client).
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
        self.close(CLOSE_SLOW_CONSUMER, "slow consumer: outbound buffer exceeded")

    def connectionLost(self, reason: Any = None) -> None:
        host = self.host
        self._gone = True
        if self._held is not None:
            self._held.cancel()
            self._held = None
        self.session.lost()
        if self.outbox is not None:
            host.streams.closed(self)
            host.options.release(self._variant)
            self._variant = PLAIN
            self.state = _STATE_CLOSED
            self.outbox = None
            host.subscriptions_changed()
            code = self._close_code
            count_closed(code, code is not None)
        host.connection_lost(self)


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

