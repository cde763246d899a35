"""
The shard's WebSocket protocol: one Autobahn server protocol per client,
speaking the JSON control protocol of docs/protocol.md. Events never pass
through here: they go from the shard's L{odin_ws.shard.fanout.Fanout} straight to
each connection's L{odin_ws.shard.outbox.Outbox}.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING

from autobahn.twisted.websocket import WebSocketServerFactory
from autobahn.websocket.types import ConnectionDeny
from twisted.logger import Logger

from odin_ws.common import metrics
from odin_ws.common.clientip import client_ip
from odin_ws.common.logs import audit, redact
from odin_ws.common.ratelimit import TokenBucket
from odin_ws.shard import auth, messages, recovery, sse
from odin_ws.shard.frames import text_frame
from odin_ws.shard.headgate import HeadGate
from odin_ws.shard.lean import LeanServerProtocol
from odin_ws.shard.outbox import Outbox, OutboxHolder
from odin_ws.shard.subscriptions import BudgetExceeded

if TYPE_CHECKING:
    from odin_ws.common.settings import Settings
    from odin_ws.shard.service import Shard

#: Close codes of docs/protocol.md.
CLOSE_RESTARTING = 4000
CLOSE_SLOW_CONSUMER = 4008
CLOSE_POLICY = 1008
CLOSE_TOKEN_EXPIRED = 4001


class ClientProtocol(OutboxHolder, LeanServerProtocol):
    """One WebSocket client of a shard (its Outbox closes when it leaves the open state)."""

    log = Logger()
    factory: ClientFactory
    outbox: Outbox | None
    # In slots like Autobahn's state (odin_ws/shard/lean.py): every
    # connection carries them. OutboxHolder's two attributes included.
    __slots__ = ("outbox", "_ws_state", "adopted_at", "bucket", "strikes", "strike_stamp",
                 "ever_subscribed", "_idle_call", "_expiry_call", "grant", "client_ip",
                 "ip_counted", "head_gate", "url_subscribe", "deny_body")

    def __init__(self):
        super().__init__()
        self.adopted_at = 0.0
        self.bucket: TokenBucket | None = None
        self.strikes = 0.0
        self.strike_stamp = 0.0
        self.ever_subscribed = False
        self._idle_call = None
        self._expiry_call = None
        self.grant: auth.Grant = auth.OPEN
        self.client_ip = ""
        self.ip_counted = False
        self.head_gate: HeadGate | None = None
        #: The subscribe the URL asks for (?channels=...), made at open.
        self.url_subscribe: messages.Subscribe | None = None
        #: The JSON body of a refused handshake (subscribe by URL), if any.
        self.deny_body: bytes | None = None

    def connectionMade(self):
        # Adoption: the parent's head bytes are replayed right after this.
        self.adopted_at = time.monotonic()
        self.head_gate = HeadGate(self.transport,
                                  self.factory.shard.settings.listen.max_head_bytes)
        # No Nagle: events are small writes, and a client that delays its
        # ACKs (most do) would otherwise hold each next one up to ~40 ms.
        # Autobahn's connectionMade means to do this but asks before it has
        # copied tcpNoDelay from the factory; its AttributeError is
        # swallowed and the option stays off (Autobahn 26.10).
        try:
            self.transport.setTcpNoDelay(True)
        except (AttributeError, OSError):
            pass    # not a TCP transport
        super().connectionMade()
        self.factory.shard.connection_made(self)

    def dataReceived(self, data: bytes) -> None:
        gate = self.head_gate
        if gate is None:
            return super().dataReceived(data)
        # Until the handshake ends, Autobahn reads only what the parser the
        # parent uses accepted (odin_ws/shard/headgate.py, issue 16).
        data = gate.admit(data)
        head = gate.head
        if head is not None and head.path == self.factory.shard.settings.listen.sse_path:
            # An event stream, not a WebSocket: odin_ws/shard/sse.py serves it.
            self.head_gate = None
            sse.take_over(self, head)
            return
        if data:
            super().dataReceived(data)
        if self.state != self.STATE_CONNECTING:
            self.head_gate = None

    def connectionLost(self, reason):
        super().connectionLost(reason)
        self.factory.shard.connection_lost(self)

    def onConnect(self, request):
        shard = self.factory.shard
        settings = shard.settings
        if request.path != settings.listen.ws_path:
            raise ConnectionDeny(404, "Not Found")
        if not shard.accepting:
            raise ConnectionDeny(503, "Service Unavailable")
        origins = settings.limits.allowed_origins
        if origins and request.headers.get("origin", "") not in origins:
            self._deny("origin", 403, "Forbidden: origin not allowed")
        self.client_ip = self._client_ip(request)
        if not shard.ip_admit(self):
            self._deny("per_ip", 429, "Too Many Requests: too many connections from this address")
        verifier = shard.verifier
        if verifier.enabled:
            token = auth.token_from_request(request.headers, request.params, verifier.sources)
            try:
                self.grant = verifier.verify(token)
            except auth.AuthError as e:
                self._deny("auth_" + e.reason, 401, f"Unauthorized: {e.message}")
        self._check_url_subscribe(request)
        if verifier.enabled:
            self._schedule_expiry()
        return auth.subprotocol(request.protocols)

    def _check_url_subscribe(self, request) -> None:
        """
        Subscribe by URL (C{?channels=...}, docs/protocol.md): checked now,
        so a bad list refuses the upgrade with a JSON body; made at open.
        """
        gate = self.head_gate
        if gate is not None and gate.head is not None:
            query = gate.head.query
        else:
            query = {k: v[0] for k, v in request.params.items() if v}
        if not query:
            return
        shard = self.factory.shard
        limits = shard.settings.limits
        try:
            msg = messages.parse_url_subscribe(query, limits.max_channels_per_message,
                                               limits.max_channel_length, limits.max_positions)
            if msg is None:
                return
            denied = [c.name for c in msg.channels if not self.grant.allows(c.token, c.event_type)]
            if denied:
                raise messages.ClientError(messages.FORBIDDEN,
                                           f"your token does not allow {denied[0][:100]}")
            if len(msg.channels) > limits.max_subscriptions:
                raise messages.ClientError(messages.TOO_MANY_SUBSCRIPTIONS, "a connection may "
                                           f"hold at most {limits.max_subscriptions} subscriptions")
            for topic, _ in msg.since or ():
                if topic not in shard.settings.kafka.topics:
                    raise messages.ClientError(messages.UNKNOWN_POSITION, "position of a topic "
                                               f"this server does not serve: {topic[:80]!r}")
        except messages.ClientError as e:
            metrics.CLIENT_ERRORS.labels(code=e.code).inc()
            self.deny_body = json.dumps({"code": e.code, "message": e.message},
                                        separators=(",", ":")).encode("ascii")
            status = 403 if e.code == messages.FORBIDDEN else 400
            self._deny(e.code, status, "Forbidden" if status == 403 else "Bad Request")
        self.url_subscribe = msg

    def failHandshake(self, reason: str, code: int = 400, responseHeaders=None):
        # Autobahn quotes what it refused (a "bearer.<JWT>" subprotocol
        # offered twice, a header it cannot parse) in the status line it
        # sends and in the reason it logs: never a token (issue 16).
        body, self.deny_body = self.deny_body, None
        if body is not None:
            # A refused subscribe by URL: the reason as JSON, like the
            # error message it would have been (docs/protocol.md).
            self.wasNotCleanReason = reason
            self.sendData(b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\n"
                          b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
                          % (code, redact(reason).encode("ascii", "replace"), len(body), body))
            self.dropConnection(abort=False)
            return
        super().failHandshake(redact(reason), code, responseHeaders)

    def _client_ip(self, request) -> str:
        return client_ip(getattr(self.transport.getPeer(), "host", ""),
                         request.headers.get("x-forwarded-for"),
                         self.factory.shard.settings.limits.trusted_proxies)

    def _deny(self, reason: str, status: int, text: str):
        metrics.REJECTED.labels(status=str(status), reason=reason).inc()
        audit.info("connection from {ip} rejected: {reason} ({status})",
                   ip=self.client_ip or getattr(self.transport.getPeer(), "host", ""),
                   reason=reason, status=status)
        raise ConnectionDeny(status, text)

    def _schedule_expiry(self) -> None:
        if self._expiry_call is not None and self._expiry_call.active():
            self._expiry_call.cancel()
        self._expiry_call = None
        if self.grant.expires is None:
            return
        reactor = self.factory.shard.reactor
        delay = max(0.0, self.grant.expires + self.factory.shard.verifier.leeway - time.time())
        self._expiry_call = reactor.callLater(delay, self._expired)

    def _expired(self) -> None:
        self._expiry_call = None
        audit.info("connection from {ip} closed: token expired", ip=self.client_ip)
        self.sendClose(CLOSE_TOKEN_EXPIRED, "token expired; reconnect with a fresh token")

    def onOpen(self):
        shard = self.factory.shard
        settings = shard.settings
        self.outbox = Outbox(self, shard.fanout, shard.policy_for,
                             settings.outbound.max_buffer_bytes,
                             settings.outbound.disconnect_grace, self._slow_consumer)
        metrics.CONNECTIONS_OPENED.inc()
        if self.adopted_at:
            metrics.HANDSHAKE_SECONDS.observe(time.monotonic() - self.adopted_at)
        clock = shard.reactor
        self.bucket = TokenBucket(settings.limits.message_rate, settings.limits.message_burst,
                                  clock.seconds)
        idle_timeout = settings.keepalive.idle_timeout
        if idle_timeout > 0:
            self._idle_call = clock.callLater(idle_timeout, self._idle)
        msg, self.url_subscribe = self.url_subscribe, None
        if msg is not None:
            # Checked at the handshake (_check_url_subscribe); the ack is
            # the first message after the open.
            self._subscribe(msg)

    def reconfigure(self, settings: Settings) -> None:
        """
        Reloaded settings reach this open connection: its message rate
        and burst, its outbox's limit and grace (a connection not open
        yet reads them when it opens).
        """
        bucket = self.bucket
        if bucket is not None:
            # Tokens above a lower burst are cut at the next take().
            bucket.rate = settings.limits.message_rate
            bucket.burst = settings.limits.message_burst
        outbox = self.outbox
        if outbox is not None:
            outbox.reconfigure(settings.outbound)

    def _idle(self) -> None:
        self._idle_call = None
        if not self.ever_subscribed:
            self.sendClose(1000, "idle: no subscription")

    def _rate_ok(self) -> bool:
        """Spend a token; on refusal count a strike, and close if strikes pile up."""
        if self.bucket.take():
            return True
        limits = self.factory.shard.settings.limits
        now = self.bucket.now()
        # Strikes decay at one per second of good behaviour.
        self.strikes = max(0.0, self.strikes - (now - self.strike_stamp)) + 1
        self.strike_stamp = now
        if self.strikes > limits.rate_strikes:
            metrics.CLIENT_ERRORS.labels(code="rate_limit_close").inc()
            audit.info("connection from {ip} closed: sustained rate limit", ip=self.client_ip)
            # sendClose() refuses 1008 (it allows 1000 and 3000-4999 only);
            # sendCloseFrame is the same closing handshake without that check.
            self.sendCloseFrame(code=CLOSE_POLICY, reasonUtf8=b"rate limit exceeded",
                                isReply=False)
        else:
            self._error(messages.RATE_LIMITED, f"more than {limits.message_rate:g} "
                        "messages per second; slow down", None)
        return False

    def onMessage(self, payload: bytes, isBinary: bool):
        if self.state != self.STATE_OPEN or not self._rate_ok():
            return
        if isBinary:
            self._error(messages.BINARY_NOT_SUPPORTED,
                        "binary frames are not supported; send JSON text", None)
            return
        shard = self.factory.shard
        limits = shard.settings.limits
        try:
            msg = messages.parse_client_message(
                payload, limits.max_channels_per_message, limits.max_channel_length,
                limits.max_positions)
        except messages.ClientError as e:
            self._error(e.code, e.message, e.id)
            return
        if isinstance(msg, messages.Subscribe):
            self._subscribe(msg)
        elif isinstance(msg, messages.Unsubscribe):
            subscriptions = shard.subscriptions
            for c in msg.channels:
                subscriptions.remove(self.outbox, c.token, c.event_type)
            shard.subscriptions_changed()
            self._reply(messages.ack("unsubscribed", [c.name for c in msg.channels], msg.id))
        elif isinstance(msg, messages.Ping):
            self._reply(messages.pong(msg.id))
        elif isinstance(msg, messages.Refresh) and shard.verifier.enabled:
            self._refresh(msg)
        else:
            self._error(messages.UNKNOWN_TYPE, f"{type(msg).__name__.lower()} is not "
                        "available on this server", getattr(msg, "id", None))

    def _refresh(self, msg: messages.Refresh) -> None:
        shard = self.factory.shard
        try:
            grant = shard.verifier.verify(msg.token)
        except auth.AuthError as e:
            self._error(messages.FORBIDDEN, f"refresh refused: {e.message}", msg.id)
            return
        self.grant = grant
        self._schedule_expiry()
        # Subscriptions the new token no longer allows are dropped and reported.
        lost = [(t, e) for (t, e) in shard.subscriptions.patterns_of(self.outbox)
                if not grant.allows(t, e)]
        for t, e in lost:
            shard.subscriptions.remove(self.outbox, t, e)
        reply = {"type": "refreshed", "expires": int(grant.expires)}
        if lost:
            reply["unsubscribed"] = sorted(f"odin.token.{t}.{e}" for t, e in lost)
        if msg.id is not None:
            reply["id"] = msg.id
        self._reply(json.dumps(reply, separators=(",", ":")).encode())

    def _subscribe(self, msg: messages.Subscribe) -> None:
        shard = self.factory.shard
        subscriptions = shard.subscriptions
        limit = shard.settings.limits.max_subscriptions
        denied = [c.name for c in msg.channels if not self.grant.allows(c.token, c.event_type)]
        if denied:
            self._error(messages.FORBIDDEN, f"your token does not allow {denied[0][:100]}",
                        msg.id)
            return
        held = subscriptions.count(self.outbox)
        new = [c for c in msg.channels
               if not subscriptions.holds(self.outbox, c.token, c.event_type)]
        if held + len(new) > limit:
            self._error(messages.TOO_MANY_SUBSCRIPTIONS,
                        f"a connection may hold at most {limit} subscriptions", msg.id)
            return
        answer = None
        if msg.since is not None or msg.snapshot:
            # Made before anything is subscribed: a refusal leaves nothing behind.
            try:
                answer = recovery.answer(shard.history, msg, shard.settings.kafka.topics,
                                         shard.settings.limits.max_snapshot_events,
                                         self.outbox.limit)
            except messages.ClientError as e:
                self._error(e.code, e.message, e.id)
                return
        try:
            # All or nothing, within the shard's subscription budget.
            subscriptions.add_all(self.outbox, [(c.token, c.event_type) for c in new])
        except BudgetExceeded as e:
            self._error(e.code, e.message, msg.id)
            return
        if not self.ever_subscribed:
            self.ever_subscribed = True
            # The idle close is for connections that never subscribe: its
            # timer (~0.3 KB) need not wait out its delay.
            call, self._idle_call = self._idle_call, None
            if call is not None and call.active():
                call.cancel()
        shard.subscriptions_changed()
        channels = [c.name for c in msg.channels]
        if answer is None:
            self._reply(messages.ack("subscribed", channels, msg.id))
            return
        # The ack, then what recovery replays or the snapshot, then (from the
        # next delivered event on) live: all in this reactor turn.
        self._reply(answer.ack(channels, msg.id))
        if answer.frames:
            shard.fanout.publish_run(answer.frames, (self.outbox,))
            shard.fanout.flush()

    def _error(self, code: str, message: str, id) -> None:
        metrics.CLIENT_ERRORS.labels(code=code).inc()
        self._reply(messages.error(code, message, id))

    def _reply(self, payload: bytes) -> None:
        """
        A reply to the client goes out behind the events already queued for
        it, never ahead (an ack after a replay, a pong after a backlog):
        through the Outbox while frames wait there, else straight to the
        transport, which keeps order behind what Twisted holds.
        """
        outbox = self.outbox
        if outbox is not None and outbox.queue:
            outbox.push_control(text_frame(payload))
        else:
            self.sendMessage(payload)

    def _slow_consumer(self) -> None:
        self.sendClose(CLOSE_SLOW_CONSUMER, "slow consumer: outbound buffer exceeded")

    def onClose(self, wasClean, code, reason):
        for call in (self._idle_call, self._expiry_call):
            if call is not None and call.active():
                call.cancel()
        self._idle_call = self._expiry_call = None
        outbox = self.outbox
        if outbox is None:
            return
        self.outbox = None
        shard = self.factory.shard
        shard.subscriptions.remove_all(outbox)
        outbox.close()
        shard.subscriptions_changed()
        if self.closedByMe and self.localCloseCode is not None:
            # We closed first (1007, 1008, 1009, 4008, ...): count our code,
            # not the client's echo, nor the 1006 of a client that never
            # answered our close frame.
            code = self.localCloseCode
        reason_label = "slow_consumer" if code == CLOSE_SLOW_CONSUMER else (
            "clean" if wasClean else "dropped")
        metrics.CONNECTIONS_CLOSED.labels(reason=reason_label,
                                          code=metrics.close_code_label(code)).inc()


class ClientFactory(WebSocketServerFactory):
    """Builds the shard's client protocols, with Autobahn's options from the settings."""

    protocol = ClientProtocol

    def __init__(self, shard: Shard):
        super().__init__()
        self.shard = shard
        self.reconfigure(shard.settings)

    def reconfigure(self, settings: Settings) -> None:
        """Autobahn's options for the connections made from now on."""
        limits, keepalive = settings.limits, settings.keepalive
        self.setProtocolOptions(
            maxFramePayloadSize=limits.max_message_bytes,
            maxMessagePayloadSize=limits.max_message_bytes,
            openHandshakeTimeout=limits.handshake_timeout,
            closeHandshakeTimeout=2,
            # Autobahn's default drops the TCP connection on a protocol
            # violation without a close frame: the client would see 1006,
            # never the 1009/1007/1002 of docs/protocol.md.
            failByDrop=False,
            autoPingInterval=keepalive.ping_interval,
            autoPingTimeout=keepalive.ping_timeout,
            tcpNoDelay=True,
            perMessageCompressionAccept=lambda offers: None,
        )
