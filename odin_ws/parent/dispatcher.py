"""
The public listener of the parent: admits each accepted connection through
the node's door (per-IP rate, caps on connections held before the upgrade),
reads its HTTP request head (bounded in size and time), answers C{/health},
C{/metrics} (on the public port only with C{listen.public_metrics}) and the
demo page itself, refuses what it cannot serve with a plain HTTP status, and
hands WebSocket upgrades to the least-loaded shard with room (see
docs/architecture.md). After a handoff the parent is out of the data path:
it reads no further byte.

With TLS on the public port (C{tls.certificate} set) the parent cannot read
the head; it hands every connection over before reading a byte, and
C{/health} and C{/metrics} are served on C{listen.admin_port} instead.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet import defer, tcp
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger

from odin_ws.common import metrics
from odin_ws.common.clientip import client_ip
from odin_ws.common.httphead import HeadError, HeadReader, RequestHead
from odin_ws.common.settings import Settings
from odin_ws.parent import staticfiles
from odin_ws.parent.acceptpause import AcceptPause
from odin_ws.parent.admission import Admission
from odin_ws.parent.handoffqueue import HandoffQueue
from odin_ws.parent.handover import DoorState, Handover, peer_string
from odin_ws.parent.httpanswer import (
    JSON_TYPE,
    METRICS_TYPE,
    TEXT_TYPE,
    phrase,
    refusal_headers,
    response_head,
)
from odin_ws.parent.scrape import MetricsScrape
from odin_ws.parent.staticfiles import CLIENT_LIBRARY_PATH

log = Logger()

_HEAD_ERROR_REASONS = {400: "bad_request", 431: "head_too_large", 505: "bad_version"}


class DispatchProtocol(Handover, Protocol):
    """
    One accepted client, until it is answered or handed to a shard (the
    handing: L{Handover}).
    """

    factory: Dispatcher
    #: The reactor's TCP transport: the door pauses it and passes its descriptor on.
    transport: tcp.Server

    def __init__(self) -> None:
        self.state = DoorState.NEW
        self._reader: HeadReader | None = None
        self._timer = None
        #: The peer address the door counts this connection against, once admitted.
        self._admitted: str | None = None
        #: When it was accepted: its head timeout counts from here, waiting included.
        self._accepted = 0.0
        #: The head bytes and client address of an upgrade, kept while it waits.
        self._raw = b""
        self._ip = ""

    def connectionMade(self) -> None:
        dispatcher = self.factory
        self._accepted = dispatcher.reactor.seconds()
        dispatcher.connection_opened(self)
        peer = getattr(self.transport.getPeer(), "host", "")
        verdict = dispatcher.admission.admit(
            peer, peer in dispatcher.settings.limits.trusted_proxies)
        if verdict is not None:
            # Refused before a byte is read: nothing of it is kept.
            self.transport.pauseProducing()
            self.state = DoorState.ANSWERING
            return self.refuse(verdict[0], verdict[1], phrase(verdict[0]).lower())
        self._admitted = peer
        dispatcher.accept_pause.held(self.transport)
        if dispatcher.tls:
            # Encrypted bytes mean nothing here: hand over before reading any.
            self.transport.pauseProducing()
            self.state = DoorState.ANSWERING
            self._upgrade(b"")
            return
        self.state = DoorState.READING
        listen = dispatcher.settings.listen
        self._reader = HeadReader(listen.max_head_bytes)
        self._timer = dispatcher.reactor.callLater(listen.head_timeout, self._head_timed_out)

    def dataReceived(self, data: bytes) -> None:
        if self.state != DoorState.READING or self._reader is None:
            return
        result = self._reader.feed(data)
        if result is None:
            return
        # Stop reading at once: the bytes after the head belong to the shard.
        self.transport.pauseProducing()
        self._cancel_timer()
        self.state = DoorState.ANSWERING
        if isinstance(result, HeadError):
            self.refuse(result.status, _HEAD_ERROR_REASONS.get(result.status, "bad_request"),
                        result.reason)
            return
        verdict = self._charge_forwarded(result)
        if verdict is not None:
            self.refuse(verdict[0], verdict[1], phrase(verdict[0]).lower())
        else:
            self._route(result)

    def _charge_forwarded(self, head: RequestHead) -> tuple[int, str] | None:
        """
        A trusted proxy's connection was admitted without a rate: its head
        names the client, whose rate is charged now, for every request.
        """
        if self._admitted is None:
            return None
        if self._admitted not in self.factory.settings.limits.trusted_proxies:
            return None
        client = self._client_ip(head)
        if client == self._admitted:
            return None
        return self.factory.admission.charge(client)

    def connectionLost(self, reason: Any = None) -> None:
        self._cancel_timer()
        if self.state == DoorState.WAITING:
            self.factory.waiting.leave(self)
        if self.state != DoorState.HANDED:
            self.state = DoorState.CLOSED
        self.factory.connection_closed(self)
        if self._admitted is not None:
            self.factory.admission.release(self._admitted)
            self._admitted = None
            self.factory.accept_pause.released()

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _head_timed_out(self) -> None:
        self._timer = None
        if self.state == DoorState.READING:
            self.state = DoorState.ANSWERING
            self.transport.pauseProducing()
            self.refuse(408, "head_timeout", "request head not received in time")

    # -- answers

    def respond(self, status: int, body: bytes, content_type: str = TEXT_TYPE,
                headers: Sequence[tuple[str, str]] = (), send_body: bool = True) -> None:
        """Write a complete HTTP/1.1 response and close the connection."""
        if self.state in (DoorState.CLOSED, DoorState.HANDED):
            return
        self.transport.write(response_head(status, content_type, len(body), headers))
        if send_body:
            self.transport.write(body)
        self.state = DoorState.CLOSED
        self.transport.loseConnection()

    def refuse(self, status: int, reason: str, text: str, send_body: bool = True) -> None:
        """Answer an error status (counted in REJECTED) and close."""
        metrics.REJECTED.labels(status=str(status), reason=reason).inc()
        log.debug("refused {peer}: {status} {reason}", peer=self._peer(), status=status,
                  reason=reason)
        retry_after = None
        if status in (429, 503):
            retry_after = self.factory.admission.retry_after(reason)
            if retry_after is None:
                retry_after = self.factory.settings.listen.retry_after
        headers = refusal_headers(status, retry_after)
        if self.factory.tls:
            # No plaintext answer to a TLS client; closing is all it can get.
            self.state = DoorState.CLOSED
            self.transport.loseConnection()
            return
        self.respond(status, (text + "\n").encode("utf-8"), headers=headers,
                     send_body=send_body)

    # -- routing

    def _route(self, head: RequestHead) -> None:
        dispatcher = self.factory
        send_body = head.method != "HEAD"
        if head.method not in ("GET", "HEAD"):
            self.refuse(405, "method", "method not allowed")
        elif head.path == "/health":
            self._health(send_body)
        elif head.path == "/metrics" and (dispatcher.admin
                                          or dispatcher.settings.listen.public_metrics):
            self._metrics(send_body)
        elif dispatcher.admin:
            self.refuse(404, "not_found", "not found", send_body)
        elif head.path == CLIENT_LIBRARY_PATH:
            self._client_library(send_body)
        elif head.path == dispatcher.settings.listen.ws_path:
            if (head.method == "GET" and head.header_has_token("upgrade", "websocket")
                    and head.header_has_token("connection", "upgrade")):
                self._upgrade(head.raw, head)
            else:
                self.refuse(426, "not_upgrade", "WebSocket upgrade required", send_body)
        elif head.path == dispatcher.settings.listen.sse_path and head.path:
            # An event stream is placed and handed over like an upgrade; the
            # shard checks the rest (odin_ws/shard/clients/sse.py).
            if head.method == "GET":
                self._upgrade(head.raw, head)
            else:
                self.refuse(405, "method", "method not allowed", send_body)
        else:
            found = dispatcher.static_file(head.path)
            if found is None:
                self.refuse(404, "not_found", "not found", send_body)
            else:
                self.respond(200, found[0], found[1], send_body=send_body)

    def _client_library(self, send_body: bool) -> None:
        body = staticfiles.client_library()
        if body is None:
            return self.refuse(404, "not_found", "not found", send_body)
        # Any page may import it: module scripts are fetched with CORS.
        self.respond(200, body, staticfiles.STATIC_TYPES[".js"], send_body=send_body,
                     headers=[("Access-Control-Allow-Origin", "*")])

    def _health(self, send_body: bool) -> None:
        status, document = self.factory.health()
        body = json.dumps(document, sort_keys=True).encode("utf-8")
        self.respond(status, body, JSON_TYPE, send_body=send_body)

    def _metrics(self, send_body: bool) -> None:
        def answer(text: bytes) -> None:
            self.respond(200, text, METRICS_TYPE, send_body=send_body)

        def failed(failure: Any) -> None:
            log.failure("answering /metrics failed", failure)
            self.transport.loseConnection()

        self.factory.gather_metrics().addCallback(answer).addErrback(failed)

    # -- the client's address

    def _client_ip(self, head: RequestHead | None) -> str:
        """The peer, or the last X-Forwarded-For entry when the peer is a trusted proxy."""
        ip = getattr(self.transport.getPeer(), "host", "")
        if head is None:
            return ip
        return client_ip(ip, head.headers.get("x-forwarded-for"),
                         self.factory.settings.limits.trusted_proxies)

    def _peer(self) -> str:
        try:
            return peer_string(self.transport.getPeer())
        except Exception:
            return "?"


class Dispatcher(Factory[DispatchProtocol]):
    """
    The public (or admin) listener's factory.

    @param settings: the node's settings; limits and timeouts are read at
        each use, so a reload (L{reconfigure}) applies to the next client.
    @param shards: returns the current shard handles (C{index, alive,
        accepting, connections, capacity, call(command, **kw)}, and
        C{reserve, handoff_done, handoff_failed} to count placements).
    @param health: returns C{(status, document)} for C{/health}.
    @param admission: the node's door (L{Admission}): every accepted
        connection is admitted through it (and released when it closes), and
        every upgrade checked with it before placement.
    @param scrape: the node's C{/metrics} text, shared by the public and
        admin listeners (one cache).
    @param static_dir: the demo page's files, served when C{demo.enabled}.
    @param tls: hand connections over unread (TLS terminated in the shards).
    @param admin: serve only C{/health} and C{/metrics} (the admin port).
    """

    protocol = DispatchProtocol
    noisy = False

    def __init__(self, reactor: Any, settings: Settings, shards: Callable[[], list], *,
                 health: Callable[[], tuple[int, dict]], admission: Admission,
                 scrape: MetricsScrape, static_dir: str | None = None, tls: bool = False,
                 admin: bool = False):
        self.reactor = reactor
        self._settings = settings
        self.shards = shards
        self.health = health
        self.static_dir = os.path.realpath(static_dir) if static_dir else None
        self.tls = tls and not admin
        self.admin = admin
        self.admission = admission
        self.scrape = scrape
        self._open: set[DispatchProtocol] = set()
        self._all_closed: list[defer.Deferred] = []
        #: Upgrades waiting for a handoff slot (a storm of reconnections).
        self.waiting = HandoffQueue(reactor)
        #: Stops the listener accepting at listen.max_heads (the backlog holds the rest).
        self.accept_pause = AcceptPause(
            reactor, lambda: self._settings.listen.max_heads - self.admission.held)

    # -- lifecycle

    @property
    def settings(self) -> Settings:
        """The settings in force (replaced by L{reconfigure})."""
        return self._settings

    def reconfigure(self, settings: Settings) -> None:
        """A reload: limits and timeouts are read at each use."""
        self._settings = settings
        self.scrape.reconfigure(settings)

    @property
    def accepting(self) -> bool:
        """False once the node stopped accepting (L{Admission}): upgrades get 503."""
        return self.admission.accepting

    def close(self) -> defer.Deferred:
        """
        Close connections still sending their head; let answers, handoffs in
        flight and upgrades waiting for a slot finish (each is bounded by its
        timeout; a draining node refuses the waiting ones). Fires when no
        connection of this dispatcher is open.
        """
        for proto in list(self._open):
            if proto.state == DoorState.READING:
                proto.state = DoorState.CLOSED
                proto.transport.loseConnection()
        self.waiting.pump()
        if not self._open:
            return defer.succeed(None)
        d: defer.Deferred = defer.Deferred()
        self._all_closed.append(d)
        return d

    @property
    def pending(self) -> int:
        """Connections accepted and not yet closed or handed over."""
        return len(self._open)

    def connection_opened(self, proto: DispatchProtocol) -> None:
        """C{proto} was accepted (called by the protocol): it counts until it closes."""
        self._open.add(proto)

    def connection_closed(self, proto: DispatchProtocol) -> None:
        """C{proto}'s connection is gone (called by the protocol)."""
        self._open.discard(proto)
        if not self._open:
            waiting, self._all_closed = self._all_closed, []
            for d in waiting:
                d.callback(None)

    # -- content

    def gather_metrics(self) -> defer.Deferred:
        """
        The node's exposition (L{MetricsScrape}): this process's metrics and
        every alive shard's (labelled C{shard}), gathered at most once a
        second; a shard that fails or does not answer within
        C{listen.metrics_timeout} is left out.
        """
        return self.scrape.text()

    def static_file(self, path: str) -> tuple[bytes, str] | None:
        """The demo page file for C{path} and its content type, or None (404)."""
        if not self.static_dir or not self._settings.demo.enabled:
            return None
        return staticfiles.find(self.static_dir, path)
