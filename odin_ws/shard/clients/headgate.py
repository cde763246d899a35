"""
The shard's head gate: what a client sends before its WebSocket opens is
read here first, with the parser the parent uses
(L{odin_ws.common.httphead}) and the same limit (C{listen.max_head_bytes}),
before Autobahn sees a byte of it (issue 16).

Why: Autobahn ends a head only at CRLF CRLF, splits it with latin-1
C{str.splitlines()} and buffers everything until then without a bound.
A head the parent ended elsewhere (a bare LF) was handed over, and the
shard then buffered whatever followed (12.5 MiB measured, at quadratic
cost) until the handshake timeout; a 0x85 byte made one header two. With
TLS the parent reads nothing at all. With this gate, on every path (the
parent's replay, and the decrypted bytes of a TLS connection) Autobahn
reads only a head the shared parser accepted, which it reads the same way
(tests/test_head_differential.py checks that on a corpus and by fuzzing).

What the gate does with a connection's bytes until the handshake ends:

  - until the head is complete, keep them (at most C{max_head_bytes});
  - a head the parser refuses, or more than C{max_head_bytes} before the
    end of the read that completes the head: answer the parser's status
    (400, 431, 505) as a plain HTTP answer (inside TLS when TLS is on),
    close, count it in C{odinws_rejected_connections_total} and audit it;
  - a head the parser accepts: pass it to Autobahn with the bytes that came
    after it in the same read (bounded with it). Autobahn keeps those until
    the WebSocket is open and then reads them as frames: they are "held
    until open", not refused, since the parent hands them over too;
  - bytes of a later read while the handshake is still pending (a client
    that did not wait for the 101, RFC 6455 section 4.1; impossible while
    C{onConnect} answers within the read, as it does today): never passed,
    the connection is closed (reason C{early_data}).
"""

from __future__ import annotations

from typing import Any

from odin_ws.common import metrics
from odin_ws.common.httphead import HeadError, HeadReader, RequestHead
from odin_ws.common.logs import audit


class HeadGate:
    """The bytes of one connection before its handshake ends (see the module)."""

    __slots__ = ("_transport", "_reader", "_passed", "head")

    def __init__(self, transport: Any, max_bytes: int):
        self._transport = transport
        self._reader: HeadReader | None = HeadReader(max_bytes)
        self._passed = False
        #: The head once the parser accepted it (its path routes the
        #: connection: odin_ws/shard/clients/sse.py).
        self.head: RequestHead | None = None

    def admit(self, data: bytes) -> bytes:
        """Take C{data}; return what Autobahn may read now (C{b""}: nothing)."""
        reader = self._reader
        if reader is None:
            if self._passed:
                self._passed = False
                self._refuse(400, "early_data", None)
            return b""
        result = reader.feed(data)
        if result is None:
            return b""
        self._reader = None
        if isinstance(result, HeadError):
            self._refuse(result.status, result.label, result.response())
            return b""
        self._passed = True
        self.head = result
        return result.raw

    def refuse(self, error: HeadError) -> None:
        """Answer C{error} (a head the shard does not serve), count it, close."""
        self._reader = None
        self._passed = False
        self._refuse(error.status, error.label, error.response())

    def _refuse(self, status: int, reason: str, answer: bytes | None) -> None:
        transport = self._transport
        metrics.REJECTED.labels(status=str(status), reason=reason).inc()
        audit.info("connection from {ip} rejected: {reason} ({status})",
                   ip=getattr(transport.getPeer(), "host", ""), reason=reason, status=status)
        if answer is not None:
            transport.write(answer)
        transport.loseConnection()


def not_served(head: RequestHead, ws_path: str) -> HeadError | None:
    """
    Why the shard does not serve C{head} (405, 404, 426), as the parent
    answers it on a plain port (docs/protocol.md), or None for an upgrade
    on C{ws_path}. With TLS on the public port only the shard reads heads:
    without this, Autobahn answered anything else with 200 and its status
    page, its version included (issue 23, L1).
    """
    if head.method not in ("GET", "HEAD"):
        return HeadError(405, "method not allowed")
    if head.path != ws_path:
        return HeadError(404, "not found")
    if not (head.method == "GET" and head.header_has_token("upgrade", "websocket")
            and head.header_has_token("connection", "upgrade")):
        return HeadError(426, "WebSocket upgrade required")
    return None
