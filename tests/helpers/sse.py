"""Server-Sent Events for tests: a parser of event streams and a stream client of a fake shard."""

from __future__ import annotations

import itertools
import json
import socket
import time
from typing import Any
from urllib.parse import quote

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure

__all__ = ["SseMessage", "SseParser", "SseSocket", "StreamClient", "sse_request"]

_ports = itertools.count(50000)


class SseMessage:
    """One dispatched SSE message (or a comment, or a lone field like C{retry})."""

    def __init__(self, event: str | None, id: str | None, data: str | None,
                 comment: str | None = None, retry: int | None = None):
        self.event, self.id, self.data, self.comment, self.retry = event, id, data, comment, retry

    def json(self):
        return json.loads(self.data)

    def __repr__(self):
        return (f"SseMessage(event={self.event!r}, id={self.id!r}, data={self.data!r}, "
                f"comment={self.comment!r}, retry={self.retry!r})")


class SseParser:
    """
    An event-stream parser close to the WHATWG one: fields per line, a
    message per blank line; comments and blank-line-only blocks kept as
    messages too so tests can see them. Also tracks the last event id as a
    browser's EventSource does.
    """

    def __init__(self):
        self._buf = b""
        self._fields: dict = {}
        self._data: list[str] = []
        self.last_id = ""

    def feed(self, data: bytes) -> list[SseMessage]:
        self._buf += data
        out: list[Any] = []
        while True:
            line, sep, rest = self._buf.partition(b"\n")
            if not sep:
                return out
            self._buf = rest
            text = line.decode("utf-8").rstrip("\r")
            if text == "":
                if self._fields or self._data:
                    if "id" in self._fields:
                        self.last_id = self._fields["id"]
                    out.append(SseMessage(self._fields.get("event"), self._fields.get("id"),
                                          "\n".join(self._data) if self._data else None,
                                          self._fields.get("comment"),
                                          self._fields.get("retry")))
                self._fields, self._data = {}, []
                continue
            if text.startswith(":"):
                self._fields["comment"] = text[1:].strip()
                continue
            name, _, value = text.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "data":
                self._data.append(value)
            elif name == "retry":
                self._fields["retry"] = int(value)
            else:
                self._fields[name] = value


def sse_request(path: str = "/sse", query: dict | None = None,
                headers: tuple[str, ...] = (), method: str = "GET") -> bytes:
    """A request head for an event stream."""
    target = path
    if query:
        target += "?" + "&".join(f"{k}={quote(str(v), safe=',*:~;')}" for k, v in query.items())
    lines = [f"{method} {target} HTTP/1.1", "Host: node", "Accept: text/event-stream", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class StreamClient:
    """One SSE client of a fake shard (L{ShardTestCase}): what the shard's factory builds."""

    def __init__(self, shard, ip: str = "10.0.0.1", transport=None):
        from tests.helpers.cases import HOST, MemoryTransport
        self.peer = IPv4Address("TCP", ip, next(_ports))
        self.transport = transport or MemoryTransport(hostAddress=HOST, peerAddress=self.peer)
        first = shard.factory.buildProtocol(self.peer)
        # What a tcp.Connection has: the protocol it delivers to (the
        # stream replaces the WebSocket protocol there).
        self.transport.protocol = first
        first.makeConnection(self.transport)
        self.status: int | None = None
        self.headers: dict[str, str] = {}
        self.body = b""
        self.lost = False
        self.parser = SseParser()
        self._read = 0

    @property
    def proto(self):
        return self.transport.protocol

    def request(self, query: dict | None = None, headers: tuple[str, ...] = (),
                path: str = "/sse", method: str = "GET") -> int:
        """Send the request; the HTTP status of the answer."""
        self.proto.dataReceived(sse_request(path, query, headers, method))
        if hasattr(self.transport, "drain"):   # a StalledSocket: read the answer
            self.transport.drain()
        self.settle()
        data = self.wire()
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split(" ", 2)[1])
        self.headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        self._read = len(head) + 4
        if self.status != 200:
            self.body = rest
        return self.status

    def error(self) -> dict:
        return json.loads(self.body)

    def wire(self) -> bytes:
        value = self.transport.value()
        return bytes(value)

    def settle(self) -> None:
        """Deliver connectionLost once the server closed, as a reactor would."""
        if self.transport.disconnecting and not self.lost:
            self.lost = True
            self.proto.connectionLost(Failure(ConnectionDone()))

    def drop(self) -> None:
        """The client goes away."""
        if not self.lost:
            self.lost = True
            self.transport.disconnecting = True
            self.proto.connectionLost(Failure(ConnectionDone()))

    def messages(self, comments: bool = False) -> list[SseMessage]:
        """The SSE messages that came since the last call."""
        self.settle()
        data = self.wire()
        new, self._read = data[self._read:], len(data)
        out = self.parser.feed(new)
        return out if comments else [m for m in out if m.comment is None]

    def events(self) -> list[dict]:
        """The unnamed messages' JSON (events), others must not be there."""
        msgs = self.messages()
        assert all(m.event is None for m in msgs), msgs
        return [m.json() for m in msgs]


class SseSocket:
    """
    A raw-socket SSE client of a real node (what curl does): one GET, the
    status and headers, then SSE messages as they come, read with a deadline.
    """

    def __init__(self, port: int, query: dict | None = None, headers: tuple[str, ...] = (),
                 path: str = "/sse", timeout: float = 10.0, rcvbuf: int | None = None):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:   # a small window: a client that stops reading stalls soon
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect(("127.0.0.1", port))
        self.sock.sendall(sse_request(path, query, headers))
        self.parser = SseParser()
        self.pending: list[SseMessage] = []
        self.closed = False
        buf = b""
        deadline = time.monotonic() + timeout
        while b"\r\n\r\n" not in buf:
            chunk = self._recv(deadline)
            if not chunk:
                raise ConnectionError(f"closed before an answer: {buf!r}")
            buf += chunk
        head, _, rest = buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split(" ", 2)[1])
        self.headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        self.body = b""
        if self.status != 200:
            self.body = rest
            while len(self.body) < int(self.headers.get("content-length", 0)):
                chunk = self._recv(deadline)
                if not chunk:
                    break
                self.body += chunk
            self.close()
        else:
            self.pending += self.parser.feed(rest)

    def _recv(self, deadline: float) -> bytes:
        self.sock.settimeout(max(0.01, deadline - time.monotonic()))
        return self.sock.recv(65536)

    def error(self) -> dict:
        return json.loads(self.body)

    def next(self, timeout: float = 10.0, comments: bool = False) -> SseMessage:
        """The next message; TimeoutError past C{timeout}; EOFError once the stream ended."""
        deadline = time.monotonic() + timeout
        while True:
            while self.pending:
                msg = self.pending.pop(0)
                if comments or msg.comment is None:
                    return msg
            if self.closed:
                raise EOFError("stream ended")
            if time.monotonic() >= deadline:
                raise TimeoutError("no SSE message")
            try:
                chunk = self._recv(deadline)
            except TimeoutError:
                raise TimeoutError("no SSE message") from None
            except OSError:
                chunk = b""
            if not chunk:
                self.closed = True
            else:
                self.pending += self.parser.feed(chunk)

    def close(self) -> None:
        self.closed = True
        self.sock.close()
