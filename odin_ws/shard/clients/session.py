"""
One client of a shard, whatever carries it: the rules every client obeys,
written once for the WebSocket protocol (L{odin_ws.shard.clients.websocket}) and the
Server-Sent Events stream (L{odin_ws.shard.clients.sse}).

The transports are adapters (the shape of the C{websockets} library's
sans-I/O core, and of Centrifugo's transports over one client core): they
turn bytes into calls on a L{Session} (the request head into L{admit} and
L{url_subscribe}, a client message into L{message_allowed} and L{subscribe},
L{unsubscribe}, L{refresh}) and what the session answers into their own
frames (L{ClientTransport.reply}, L{ClientTransport.close}, or a L{Refused}
turned into an HTTP answer). A new per-client rule (a filter, a rate cap)
is added here, once; the rules of the request head are in
L{odin_ws.shard.clients.request}, the close codes in
L{odin_ws.shard.clients.closecodes}.

Events never pass through a session: the shard's fan-out writes them to the
connection's L{Outbox}, which the session creates when the client opens.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from odin_ws.common import metrics
from odin_ws.common.events import Event
from odin_ws.common.logs import audit
from odin_ws.common.ratelimit import TokenBucket
from odin_ws.shard.clients import auth, messages, recovery
from odin_ws.shard.clients.closecodes import CLOSE_NORMAL, CLOSE_POLICY, CLOSE_TOKEN_EXPIRED
from odin_ws.shard.clients.host import ClientHost, ClientTransport
from odin_ws.shard.clients.request import RequestRules
from odin_ws.shard.delivery.gaps import count_told
from odin_ws.shard.delivery.outbox import Outbox
from odin_ws.shard.delivery.subscriptions import BudgetExceeded, SubscriptionIndex
from odin_ws.shard.history.holes import UNDECODABLE

if TYPE_CHECKING:
    from odin_ws.common.settings import Settings
    from odin_ws.shard.clients.recoveryhold import HeldRecovery


class Session(RequestRules):
    """
    The client rules of one connection: admission (origin, per-IP share,
    authentication), subscribe and unsubscribe (by message or by URL) under
    the token's grant and the limits and budgets, recovery and snapshots,
    the message rate, token refresh and expiry, and the idle close of a
    client that never subscribes.

    @param noun: what the audit lines call the client (C{connection}, C{stream}).
    """

    # Every connection carries one: slots, not a __dict__ (odin_ws/shard/clients/lean.py);
    # those of the request's rules are L{RequestRules}'.
    __slots__ = ("transport", "bucket", "replay_bucket", "strikes", "strike_stamp",
                 "ever_subscribed", "_idle_call", "_expiry_call", "_held")

    def __init__(self, host: ClientHost, transport: ClientTransport, noun: str):
        self.host = host
        self.transport = transport
        self.noun = noun
        self.client_ip = ""
        self.ip_counted = False
        self.grant: auth.Grant = auth.OPEN
        self.bucket: TokenBucket | None = None
        #: Bytes of replays and snapshots (limits.replay_rate), made at the first.
        self.replay_bucket: TokenBucket | None = None
        self.strikes = 0.0
        self.strike_stamp = 0.0
        self.ever_subscribed = False
        self._idle_call: Any = None
        self._expiry_call: Any = None
        #: A recovery held until the shard can answer it truly, and the
        #: client's messages that came after it (they wait behind it, in order).
        self._held: tuple[HeldRecovery, list[bytes]] | None = None

    # -- the open connection

    def _outbox(self) -> Outbox:
        outbox = self.transport.outbox
        # Messages are read only while the connection is open, and it has
        # its outbox from its open to its close.
        assert outbox is not None, "a message before the open or after the close"
        return outbox

    def open(self, adopted_at: float, on_slow: Callable[[], None], talks: bool = True) -> Outbox:
        """
        The connection is open: its outbox (given to the transport), its
        token's expiry, and for a client that C{talks} (sends messages: a
        WebSocket) its message rate and its idle close.
        """
        host = self.host
        settings = host.settings
        transport = self.transport
        # Catch-up frames are WebSocket frames: an SSE stream (which does
        # not talk) drops past its limit instead.
        transport.outbox = outbox = Outbox(
            transport, host.fanout, host.policy_for, settings.outbound.max_buffer_bytes,
            settings.outbound.disconnect_grace, on_slow, host.backlog if talks else None)
        metrics.CONNECTIONS_OPENED.inc()
        if adopted_at:
            metrics.HANDSHAKE_SECONDS.observe(time.monotonic() - adopted_at)
        self.schedule_expiry()
        if talks:
            clock = host.reactor
            limits = settings.limits
            self.bucket = TokenBucket(limits.message_rate, limits.message_burst, clock.seconds)
            idle_timeout = settings.keepalive.idle_timeout
            if idle_timeout > 0:
                self._idle_call = clock.callLater(idle_timeout, self._idle)
        return outbox

    def reconfigure(self, settings: Settings) -> None:
        """
        Reloaded settings reach this open connection: its message rate and
        burst, its outbox's limit and grace (one not open yet reads them
        when it opens).
        """
        bucket = self.bucket
        if bucket is not None:
            # Tokens above a lower burst are cut at the next take().
            bucket.rate = settings.limits.message_rate
            bucket.burst = settings.limits.message_burst
        replay = self.replay_bucket
        if replay is not None:
            replay.rate = settings.limits.replay_rate
            replay.burst = settings.limits.replay_burst
        outbox = self.transport.outbox
        if outbox is not None:
            outbox.reconfigure(settings.outbound)

    def message_allowed(self, cost: int = 1) -> bool:
        """
        Spend C{cost} tokens of the message rate; on refusal count a strike,
        and close the connection if strikes pile up (they decay at one per
        second of good behaviour).
        """
        bucket = self.bucket
        if bucket is None or bucket.take(cost):
            return True
        limits = self.host.settings.limits
        now = bucket.now()
        self.strikes = max(0.0, self.strikes - (now - self.strike_stamp)) + 1
        self.strike_stamp = now
        if self.strikes > limits.rate_strikes:
            metrics.CLIENT_ERRORS.labels(code="rate_limit_close").inc()
            audit.info("{noun} from {ip} closed: sustained rate limit", noun=self.noun,
                       ip=self.client_ip)
            self.transport.close(CLOSE_POLICY, "rate limit exceeded")
        else:
            self.error(messages.RATE_LIMITED, f"more than {limits.message_rate:g} "
                       "messages per second; slow down", None)
        return False

    def message(self, payload: bytes, until: float | None = None) -> None:
        """
        One text message of the client (docs/protocol.md), answered. A
        recovery in it waits at most until C{until} (reactor seconds) if it
        waited behind another one.
        """
        if self._held is not None:
            self._held[1].append(payload)   # behind a held recovery (spent its rate already)
            return
        host = self.host
        limits = host.settings.limits
        try:
            msg = messages.parse_client_message(
                payload, limits.max_channels_per_message, limits.max_channel_length,
                limits.max_positions)
        except messages.ClientError as e:
            self.error(e.code, e.message, e.id)
            return
        if isinstance(msg, messages.Subscribe):
            if (msg.since is not None or msg.snapshot) and \
                    not self.message_allowed(limits.recovery_cost - 1):
                # Its first token was spent when it arrived; a recovery or a
                # snapshot reads history and costs more (issue 23).
                return
            self.subscribe(msg, until)
        elif isinstance(msg, messages.Unsubscribe):
            self.unsubscribe(msg)
        elif isinstance(msg, messages.Ping):
            self.transport.reply(messages.pong(msg.id))
        elif isinstance(msg, messages.Refresh) and host.verifier.enabled:
            self.refresh(msg)
        else:
            self.error(messages.UNKNOWN_TYPE, f"{type(msg).__name__.lower()} is not "
                       "available on this server", getattr(msg, "id", None))

    def subscribe(self, msg: messages.Subscribe, until: float | None = None) -> None:
        """
        Subscribe to C{msg}'s channels, all or none: within the grant, the
        connection's and the shard's budgets, with its recovery or snapshot
        answered first (ack, replay or snapshot, then live, in this turn).
        A recovery the shard cannot answer truly yet waits first, bounded
        (L{odin_ws.shard.clients.recoveryhold}), at most until C{until}.
        """
        host = self.host
        if msg.since and host.recoveries.waits(msg.since, until):
            self._held = (host.recoveries.hold(msg.since, lambda: self._resume(msg), until), [])
            return
        outbox = self._outbox()
        subscriptions = host.subscriptions
        options = host.options
        try:
            self._check_grant(msg)
            variant, new = options.prepare(outbox, subscriptions, msg,
                                           host.settings.limits.max_subscriptions)
        except messages.ClientError as e:
            self.error(e.code, e.message, msg.id)
            return
        answer = None
        if msg.since is not None or msg.snapshot:
            # Made before anything is subscribed: a refusal leaves nothing behind.
            try:
                answer = self.answer(msg, outbox.limit, streamable=outbox.can_stream(
                    {(c.token, c.event_type) for c in msg.channels}),
                    behind=outbox.behind is not None, keep=options.keeps(variant))
            except messages.ClientError as e:
                options.release(variant)
                self.error(e.code, e.message, e.id)
                return
        try:
            # All or nothing, within the shard's subscription budget.
            options.commit(outbox, subscriptions, new, variant, self.client_ip)
        except BudgetExceeded as e:
            self.error(e.code, e.message, msg.id)
            return
        self.subscribed()
        channels = [c.name for c in msg.channels]
        if answer is None:
            self.transport.reply(messages.ack("subscribed", channels, msg.id))
            return
        self.transport.reply(answer.ack(channels, msg.id))
        if msg.since:
            host.recovering(outbox)
        if answer.stream is not None:
            outbox.recover_from(answer.stream)
        elif answer.frames:
            count_told(host.fanout.stats, UNDECODABLE, answer.holes)
            # Plain even where compression was negotiated: this is per
            # connection (docs/protocol.md, "Compression").
            host.fanout.publish_run(answer.frames, (outbox,), answer.events, compress=False)
            host.fanout.flush()

    def answer(self, msg: messages.Subscribe, room: int,
               encode: Callable[[bytes, Event], bytes] | None = None,
               overhead: int = 8, streamable: bool = False,
               behind: bool = False, keep: Callable[[Event], bool] | None = None
               ) -> recovery.Answer:
        """
        C{msg}'s recovery and snapshot from the shard's history, in the
        transport's framing (C{encode}; default: WebSocket text frames),
        within C{room} bytes, or streamed if larger (or C{behind}: the
        connection is catching up) and C{streamable}, only the events
        C{keep} keeps (L{odin_ws.shard.clients.recovery.answer}).

        @raise messages.ClientError: C{unknown_position}, C{snapshot_too_large}.
        """
        settings = self.host.settings
        limits = settings.limits
        if encode is None:
            return recovery.answer(self.host.history, msg, settings.kafka.topics,
                                   limits.max_snapshot_events, room,
                                   max_scan=limits.max_recovery_scan, streamable=streamable,
                                   allow=self.replay_allowed, behind=behind, keep=keep)
        return recovery.answer(self.host.history, msg, settings.kafka.topics,
                               limits.max_snapshot_events, room, encode, overhead,
                               max_scan=limits.max_recovery_scan, allow=self.replay_allowed,
                               keep=keep)

    def replay_allowed(self, size: int) -> bool:
        """
        Spend C{size} bytes of the connection's replay egress
        (C{limits.replay_rate}, C{limits.replay_burst}): a replay that fits
        the buffer could be re-requested for ~330x egress (issue 23, L3).
        """
        bucket = self.replay_bucket
        if bucket is None:
            limits = self.host.settings.limits
            bucket = self.replay_bucket = TokenBucket(limits.replay_rate, limits.replay_burst,
                                                      self.host.reactor.seconds)
        return bucket.spend(size)

    def _resume(self, msg: messages.Subscribe) -> None:
        """The held recovery's turn: answer it, then the messages that came after it."""
        if self._held is None:
            return
        held, waiting = self._held
        self._held = None
        if self.transport.outbox is None:
            return    # closing
        self.subscribe(msg, until=0.0)
        # Recoveries that waited behind it wait no longer than it did.
        for i, payload in enumerate(waiting):
            if self._held is not None:
                self._held[1].extend(waiting[i:])
                return
            self.message(payload, held.deadline)

    def subscribed(self) -> None:
        """A subscription was made: the idle close is off, the shard's count is new."""
        if not self.ever_subscribed:
            self.ever_subscribed = True
            # The idle close is for connections that never subscribe: its
            # timer (~0.3 KB) need not wait out its delay.
            call, self._idle_call = self._idle_call, None
            if call is not None and call.active():
                call.cancel()
        self.host.subscriptions_changed()

    def unsubscribe(self, msg: messages.Unsubscribe) -> None:
        """Drop C{msg}'s channels (those not held are no error) and acknowledge."""
        host = self.host
        subscriptions = host.subscriptions
        outbox = self._outbox()
        for c in msg.channels:
            if not subscriptions.remove(outbox, c.token, c.event_type):
                host.options.remove(outbox, c.token, c.event_type)
        host.subscriptions_changed()
        self.transport.reply(messages.ack("unsubscribed", [c.name for c in msg.channels],
                                          msg.id))

    def refresh(self, msg: messages.Refresh) -> None:
        """
        A new token for the open connection: its grant and expiry replace the
        old ones; subscriptions the new grant does not allow are dropped and
        reported.
        """
        host = self.host
        try:
            grant = host.verifier.verify(msg.token)
        except auth.AuthError as e:
            self.error(messages.FORBIDDEN, f"refresh refused: {e.message}", msg.id)
            return
        self.grant = grant
        self.schedule_expiry()
        outbox = self._outbox()
        subscriptions = host.subscriptions
        lost = [(token, etype) for (token, etype)
                in host.options.patterns_of(outbox, subscriptions)
                if not grant.allows(token, etype)]
        for token, etype in lost:
            if not subscriptions.remove(outbox, token, etype):
                host.options.remove(outbox, token, etype)
        reply: dict[str, Any] = {"type": "refreshed", "expires": int(grant.expires or 0)}
        if lost:
            reply["unsubscribed"] = sorted(f"odin.token.{token}.{etype}"
                                           for token, etype in lost)
        if msg.id is not None:
            reply["id"] = msg.id
        self.transport.reply(json.dumps(reply, separators=(",", ":")).encode())

    def error(self, code: str, message: str, id: messages.MessageId) -> None:
        """Tell the client about a message refused (counted by code)."""
        metrics.CLIENT_ERRORS.labels(code=code).inc()
        self.transport.reply(messages.error(code, message, id))

    def schedule_expiry(self) -> None:
        """Close the connection when its token expires (plus C{auth.leeway})."""
        call, self._expiry_call = self._expiry_call, None
        if call is not None and call.active():
            call.cancel()
        expires = self.grant.expires
        if expires is None:
            return
        delay = max(0.0, expires + self.host.verifier.leeway - time.time())
        self._expiry_call = self.host.reactor.callLater(delay, self._expired)

    def _expired(self) -> None:
        self._expiry_call = None
        audit.info("{noun} from {ip} closed: token expired", noun=self.noun, ip=self.client_ip)
        self.transport.close(CLOSE_TOKEN_EXPIRED, "token expired; reconnect with a fresh token")

    def _idle(self) -> None:
        self._idle_call = None
        if not self.ever_subscribed:
            self.transport.close(CLOSE_NORMAL, "idle: no subscription")

    # -- the end

    def closed(self, outbox: Outbox, index: SubscriptionIndex) -> None:
        """The open connection closed: its timers, subscriptions (in C{index}) and outbox go."""
        self.stop_timers()
        index.remove_all(outbox)
        self.host.options.remove_all(outbox)
        outbox.close()
        self.host.subscriptions_changed()

    def lost(self) -> None:
        """The connection is gone (open or not): its timers and its address's count go."""
        self.stop_timers()
        if self.ip_counted:
            self.ip_counted = False
            self.host.release_ip(self.client_ip)

    def stop_timers(self) -> None:
        """No idle close, no expiry close, no held recovery any more (the connection is closing)."""
        if self._held is not None:
            self._held[0].cancel()
            self._held = None
        for call in (self._idle_call, self._expiry_call):
            if call is not None and call.active():
                call.cancel()
        self._idle_call = self._expiry_call = None
