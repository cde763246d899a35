"""
An upgrade's way from the parent's door to a shard: placement on the
least-loaded shard with room (refused when the node or every shard is
full), a wait in arrival order while every healthy shard has
C{supervisor.max_handoffs_in_flight} handoffs unanswered (a storm of
reconnections, bounded by C{listen.head_timeout} from the accept), the
offer of the descriptor and the head over the shard's control channel,
and what its answer, its failure or its silence means for the client.

It is the part of L{odin_ws.parent.dispatcher.DispatchProtocol} that
runs once the head asks for a WebSocket upgrade or an event stream.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

from twisted.internet import defer, tcp
from twisted.logger import Logger

from odin_ws.common import handoff, metrics
from odin_ws.common.httphead import RequestHead
from odin_ws.common.settings import Settings
from odin_ws.parent.admission import Admission
from odin_ws.parent.handoffqueue import HandoffQueue
from odin_ws.parent.httpanswer import phrase
from odin_ws.parent.placement import SATURATED, place

log = Logger()


def peer_string(address: Any) -> str:
    """C{ip:port} of a Twisted address (C{[ip]:port} for IPv6)."""
    host = getattr(address, "host", "?")
    port = getattr(address, "port", 0)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class DoorState(enum.Enum):
    """
    Where one accepted connection is: NEW -> READING (its head) ->
    ANSWERING (the parent answers it) | WAITING (for a handoff slot) |
    HANDING (offered to a shard) -> HANDED (the shard took it) | CLOSED
    (closed, or let go of after a handoff the shard may have adopted).
    """

    NEW = "new"
    READING = "reading"
    WAITING = "waiting"
    ANSWERING = "answering"
    HANDING = "handing"
    HANDED = "handed"
    CLOSED = "closed"


class Door(Protocol):
    """What the handover needs of the listener (L{odin_ws.parent.dispatcher.Dispatcher})."""

    reactor: Any
    admission: Admission
    waiting: HandoffQueue
    tls: bool

    @property
    def settings(self) -> Settings: ...

    def shards(self) -> list: ...


class Handover:
    """
    Placement, waiting and the handoff of one accepted connection (mixed
    into the dispatcher's protocol, whose state and answers it uses).
    """

    factory: Door
    transport: tcp.Server
    state: DoorState
    _timer: Any
    _accepted: float
    #: The head bytes and client address of an upgrade, kept while it waits.
    _raw: bytes
    _ip: str

    if TYPE_CHECKING:
        def refuse(self, status: int, reason: str, text: str,
                   send_body: bool = True) -> None: ...

        def _cancel_timer(self) -> None: ...

        def _client_ip(self, head: RequestHead | None) -> str: ...

    def _upgrade(self, raw: bytes, head: RequestHead | None = None) -> None:
        self._raw = raw
        self._ip = self._client_ip(head)
        queue = self.factory.waiting
        if len(queue) == 0:
            if not self._place():
                self._wait()
            return
        # Others wait already: behind them, never ahead.
        self._wait()
        queue.pump()

    def _place(self) -> bool:
        """
        Refuse the upgrade or hand it to a shard, and return True; or return
        False when the only thing missing is a free handoff slot.
        """
        dispatcher = self.factory
        verdict = dispatcher.admission.check(self._ip)
        if verdict is not None:
            status, reason = verdict
            if reason == "draining":
                self.refuse(503, reason, "server is shutting down")
            else:
                self.refuse(status, reason, phrase(status).lower())
            return True
        handle, full = place(dispatcher.shards(), dispatcher.settings.limits.max_connections)
        if full == SATURATED:
            return False
        if handle is None:
            self.refuse(503, full or "no_shard", "no capacity, retry later")
            return True
        self._hand_to(handle)
        return True

    def _wait(self) -> None:
        """Wait for a handoff slot, until the head timeout (from the accept) passes."""
        self.state = DoorState.WAITING
        self.factory.waiting.join(self)
        self._cancel_timer()
        left = self._accepted + self.factory.settings.listen.head_timeout
        self._timer = self.factory.reactor.callLater(
            max(0.0, left - self.factory.reactor.seconds()), self._wait_timed_out)

    def try_place(self) -> bool:
        """The queue's turn (L{HandoffQueue.pump}): handed over or refused (True), or still waiting."""
        if self.state != DoorState.WAITING:
            return True
        self.state = DoorState.ANSWERING
        if self._place():
            self._cancel_timer()
            return True
        self.state = DoorState.WAITING
        return False

    def _wait_timed_out(self) -> None:
        self._timer = None
        if self.state == DoorState.WAITING and self.factory.waiting.timed_out(self):
            self.state = DoorState.ANSWERING
            self.refuse(503, "wait_timeout", "no capacity, retry later")

    def _hand_to(self, handle: Any) -> None:
        dispatcher = self.factory
        settings = dispatcher.settings
        raw, self._raw = self._raw, b""
        # Count it now, until the call completes (however late): the next
        # placement, maybe before this answer, must see it.
        handle.reserve()
        self.state = DoorState.HANDING
        started = dispatcher.reactor.seconds()
        try:
            d = handoff.offer(dispatcher.reactor, handle.call, self.transport.fileno(), raw,
                              peer_string(self.transport.getPeer()),
                              settings.listen.handoff_timeout, tls=dispatcher.tls,
                              on_timeout=lambda: self._handoff_timed_out(handle))
        except OSError as e:
            d = defer.fail(handoff.NotSent(str(e)))
        d.addCallbacks(self._handed, self._handoff_failed, callbackArgs=(handle, started),
                       errbackArgs=(handle,))

    def _handed(self, answer: Mapping[str, Any], handle: Any, started: float) -> None:
        handle.handoff_done()
        self.factory.waiting.pump()
        metrics.HANDOFF_SECONDS.observe(max(0.0, self.factory.reactor.seconds() - started))
        metrics.DISPATCHED.labels(shard=str(handle.index)).inc()
        if self.state == DoorState.HANDING:
            self.state = DoorState.HANDED
            handoff.release(self.transport)

    def _handoff_timed_out(self, handle: Any) -> None:
        """
        No answer within C{listen.handoff_timeout}. The descriptor and the
        message are still on their way, so the shard may yet adopt the socket
        and write its 101: the parent writes nothing and only drops its own
        copy. The client is served late if the shard adopts it, or sees its
        connection closed, with no HTTP status, when the call fails. The slot
        stays counted until then.
        """
        if self.state != DoorState.HANDING:
            return
        log.warn("shard {index} did not answer a handoff within {timeout:g}s; letting go of "
                 "the client without an answer", index=handle.index,
                 timeout=self.factory.settings.listen.handoff_timeout)
        metrics.HANDOFFS_ABANDONED.labels(reason="timeout").inc()
        self._let_go()

    def _handoff_failed(self, failure: Any, handle: Any) -> None:
        handle.handoff_failed()
        self.factory.waiting.pump()
        if self.state != DoorState.HANDING:
            log.info("handoff to shard {index} failed after the client was let go of: "
                     "{error}", index=handle.index, error=failure.getErrorMessage())
            return
        log.warn("handoff to shard {index} failed: {error}", index=handle.index,
                 error=failure.getErrorMessage())
        if handoff.not_adopted(failure):
            self.state = DoorState.ANSWERING
            self.refuse(503, "handoff_failed", "no capacity, retry later")
        else:
            # The channel failed after sending: the shard may have adopted it.
            metrics.HANDOFFS_ABANDONED.labels(reason="lost").inc()
            self._let_go()

    def _let_go(self) -> None:
        """Drop the parent's copy of a socket a shard may hold: no byte, no shutdown."""
        self.state = DoorState.CLOSED
        handoff.release(self.transport)
