"""
The rules a client's request meets before its connection opens, for every
transport: its origin, its address's share of the shard's connections, its
token, and the subscribe its URL asks for (C{?channels=...}), each refused
with a L{Refused} the transport turns into an HTTP answer, counted and
audited; and the token's grant, which every later subscribe meets too.

It is the part of L{odin_ws.shard.clients.session.Session} that runs on the
request head.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from odin_ws.common import metrics
from odin_ws.common.clientip import client_ip
from odin_ws.common.logs import audit
from odin_ws.shard.clients import auth, messages
from odin_ws.shard.clients.host import ClientHost
from odin_ws.shard.clients.refusal import Refused, bad_origin, is_origin
from odin_ws.shard.delivery.filters import FilterError, compile_filter


class RequestRules:
    """
    Admission and the URL's subscribe of one client (mixed into
    L{odin_ws.shard.clients.session.Session}, which holds the state).
    """

    # What the request's rules read and set; the session adds the rest
    # (slots, not a __dict__: odin_ws/shard/clients/lean.py).
    __slots__ = ("host", "noun", "client_ip", "ip_counted", "grant")
    host: ClientHost
    noun: str
    client_ip: str
    ip_counted: bool
    grant: auth.Grant

    def origin_allowed(self, origin: str | None) -> bool:
        """
        Whether a page of C{origin} may connect: C{limits.allowed_origins}
        compared exactly (C{null}, what a page opened from a file or a
        sandboxed frame sends, only when listed); an empty list allows any,
        C{null} and no C{Origin} included.
        """
        origins = self.host.settings.limits.allowed_origins
        return not origins or origin in origins

    def identify(self, peer: str, headers: Mapping[str, str]) -> None:
        """
        The client's address (L{odin_ws.common.clientip}), first thing: the
        per-IP share and every audit line use it.

        @param headers: the request's headers, names in lower case.
        """
        self.client_ip = client_ip(peer, headers.get("x-forwarded-for"),
                                   self.host.settings.limits.trusted_proxies)

    def admit(self, headers: Mapping[str, str], query: Mapping[str, Any],
              token_sources: Iterable[str]) -> None:
        """
        The client's origin, its address's share of the connections, its
        token (looked for in C{token_sources}, from C{headers} and C{query}),
        in this order (after L{identify}).

        @param headers: the request's headers, names in lower case.
        @raise Refused: turned down; the address is not counted then.
        """
        host = self.host
        ip = self.client_ip
        origin = headers.get("origin")
        if origin is not None and not is_origin(origin):
            raise bad_origin()
        if not self.origin_allowed(origin):
            raise Refused(403, "origin", "origin not allowed", "origin_not_allowed")
        if not host.admit_ip(ip):
            raise Refused(429, "per_ip", "too many connections from this address",
                          "too_many_connections")
        self.ip_counted = True
        verifier = host.verifier
        if verifier.enabled:
            token = auth.token_from_request(headers, query, token_sources)
            try:
                self.grant = verifier.verify(token)
            except auth.AuthError as e:
                raise Refused(401, "auth_" + e.reason, e.message, "unauthorized") from None

    def url_subscribe(self, query: Mapping[str, str],
                      last_event_id: str | None = None) -> messages.Subscribe | None:
        """
        The subscribe a URL asks for (C{?channels=...}, docs/protocol.md),
        checked as its message would be before anything opens: the token's
        grant, C{limits.max_subscriptions}, the topics of its positions.
        None when the URL asks for none.

        @raise Refused: with the protocol's error code (403 for a channel
            the token does not allow, else 400).
        """
        settings = self.host.settings
        limits = settings.limits
        try:
            msg = messages.parse_url_subscribe(query, limits.max_channels_per_message,
                                               limits.max_channel_length, limits.max_positions,
                                               last_event_id)
            if msg is None:
                return None
            self._check_grant(msg)
            if len(msg.channels) > limits.max_subscriptions:
                raise messages.ClientError(messages.TOO_MANY_SUBSCRIPTIONS, "a connection may "
                                           f"hold at most {limits.max_subscriptions} subscriptions")
            for topic, _ in msg.since or ():
                if topic not in settings.kafka.topics:
                    raise messages.ClientError(messages.UNKNOWN_POSITION, "position of a topic "
                                               f"this server does not serve: {topic[:80]!r}")
            if msg.filter is not None:
                # Its grammar and size now; the shard's count of distinct
                # filters when it is held (an error message after the open).
                try:
                    compile_filter(msg.filter, limits.max_filter_bytes)
                except FilterError as e:
                    raise messages.ClientError(e.code, e.message) from None
        except messages.ClientError as e:
            raise Refused(403 if e.code == messages.FORBIDDEN else 400, e.code, e.message,
                          e.code) from None
        return msg

    def refused(self, refusal: Refused) -> None:
        """Count and audit a refusal (the transport then answers it)."""
        metrics.REJECTED.labels(status=str(refusal.status), reason=refusal.reason).inc()
        if refusal.code in messages.ERROR_CODES:
            metrics.CLIENT_ERRORS.labels(code=refusal.code).inc()
        audit.info("{noun} from {ip} rejected: {reason} ({status})", noun=self.noun,
                   ip=self.client_ip, reason=refusal.reason, status=refusal.status)

    def _check_grant(self, msg: messages.Subscribe) -> None:
        grant = self.grant
        denied = [c.name for c in msg.channels if not grant.allows(c.token, c.event_type)]
        if denied:
            raise messages.ClientError(messages.FORBIDDEN,
                                       f"your token does not allow {denied[0][:100]}", msg.id)
