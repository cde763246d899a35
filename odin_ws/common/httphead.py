"""
The one reader of HTTP/1.x request heads (request line + headers), shared
by the parent's dispatcher and the shards' head gate
(L{odin_ws.shard.clients.headgate}), so that both processes read a client's head
the same way, byte for byte (issue 16: two parsers that disagreed let
headers be smuggled past the parent and let a head grow without bound in
the shard).

Pure code, no I/O: feed it bytes as they arrive and it answers "need more"
(C{None}), a parsed L{RequestHead}, or an L{HeadError} carrying the HTTP
status to answer with. It never raises on any input.

It is strict where a lenient reader and Autobahn's (which decodes the head
as latin-1, splits it with C{str.splitlines()} and strips with
C{str.strip()}) could read the same bytes differently:

  - every line ends with CRLF; a bare LF or a CR not followed by LF is 400;
  - the head starts with the request line (no empty lines before it, 400)
    and ends exactly at the first CRLF CRLF;
  - header names are RFC 9110 tokens, with no space before the colon;
  - header values are visible ASCII, spaces and tabs only: obs-text
    (bytes 0x80-0xff) is refused although RFC 9110 lets a recipient
    tolerate it, because latin-1 0x85 is a line break and 0xa0 white space
    to Python's string methods; other controls are refused too;
  - obs-fold (a line starting with a space or tab) is 400;
  - headers whose repetition would be ambiguous (L{SINGLE_HEADERS}) may
    appear once;
  - the request target has no fragment (C{#}), as Autobahn requires.

Everything read before the verdict counts against the size limit, the head
and any bytes that came after it in the same reads (431 beyond it): a
WebSocket client sends nothing after its head before the 101 (RFC 6455
section 4.1), so such bytes are bounded with the head.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from http import HTTPStatus
from urllib.parse import parse_qsl, urlsplit

#: RFC 9110 token characters (methods and header names).
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
#: Visible ASCII but C{#}: what a request target may contain.
_TARGET = re.compile(rb"[\x21\x22\x24-\x7e]+\Z")
_VERSION = re.compile(rb"HTTP/([0-9])\.([0-9])\Z")
#: Anything but visible ASCII, space and tab (so obs-text and controls).
_BAD_VALUE = re.compile(rb"[^\t\x20-\x7e]")

#: Headers that may appear once: a repeat would let two readers pick
#: different values (the Host a virtual host is chosen by, the key the
#: handshake answers, the credentials and the origin that are checked).
SINGLE_HEADERS = frozenset({
    "host", "upgrade", "origin", "sec-websocket-origin", "sec-websocket-key",
    "sec-websocket-version", "authorization", "content-length", "transfer-encoding",
})

#: The reason label of C{odinws_rejected_connections_total} for each status.
REASON_LABELS = {400: "bad_request", 431: "head_too_large", 505: "bad_version",
                 404: "not_found", 405: "method", 426: "not_upgrade"}


@dataclass(frozen=True)
class RequestHead:
    """A parsed request head. C{headers} has lowercase names; repeats joined by ", "."""

    method: str
    target: str
    path: str
    query: dict[str, str]
    version: str
    headers: dict[str, str]
    #: Everything read: the head and any bytes that came after it.
    raw: bytes = field(repr=False)
    #: Length of the head in C{raw}, its final CRLF CRLF included.
    size: int = 0

    def header_has_token(self, name: str, token: str) -> bool:
        """Whether the comma-separated header C{name} lists C{token} (any case)."""
        value = self.headers.get(name, "")
        return token.lower() in (part.strip().lower() for part in value.split(","))


@dataclass(frozen=True)
class HeadError:
    """A request head that cannot be served: answer C{status} and close."""

    status: int
    reason: str

    @property
    def label(self) -> str:
        """The reason label to count this refusal under."""
        return REASON_LABELS.get(self.status, "bad_request")

    def response(self) -> bytes:
        """The complete HTTP/1.1 answer (plain text, C{Connection: close})."""
        body = (self.reason + "\n").encode("ascii", "replace")
        try:
            phrase = HTTPStatus(self.status).phrase
        except ValueError:
            phrase = "Error"
        return (f"HTTP/1.1 {self.status} {phrase}\r\n"
                "Content-Type: text/plain; charset=utf-8\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n"
                "Cache-Control: no-store\r\n\r\n").encode("ascii") + body


def parse(buffer: bytes, max_bytes: int) -> RequestHead | HeadError | None:
    """
    Parse the request head at the start of C{buffer}.

    @return: C{None} when the head is not complete yet (and C{buffer} is
        still within C{max_bytes}), a L{RequestHead}, or a L{HeadError}.
    """
    return HeadReader(max_bytes).feed(buffer)


#: A parsed request line: method, target, version, path, query.
_RequestLine = tuple[bytes, bytes, bytes, str, dict[str, str]]


def _request_line(line: bytes) -> _RequestLine | HeadError:
    parts = line.split(b" ")
    if len(parts) != 3:
        return HeadError(400, "malformed request line")
    method, target, version = parts
    if not _TOKEN.match(method):
        return HeadError(400, "malformed method")
    match = _VERSION.match(version)
    if match is None:
        return HeadError(400, "malformed HTTP version")
    if match.group(1) != b"1":
        return HeadError(505, "HTTP version not supported")
    if not _TARGET.match(target):
        return HeadError(400, "malformed request target")
    located = _split_target(target.decode("ascii"))
    if isinstance(located, HeadError):
        return located
    return method, target, version, located[0], located[1]


def _split_target(target: str) -> tuple[str, dict[str, str]] | HeadError:
    """Path and query of an origin-form (C{/p?q}) or absolute-form target."""
    if target.startswith("/"):
        path, _, query = target.partition("?")
    elif target.lower().startswith(("http://", "https://")):
        try:
            parts = urlsplit(target)
        except ValueError:
            return HeadError(400, "malformed request target")
        path, query = parts.path or "/", parts.query
    else:
        return HeadError(400, "malformed request target")
    values: dict[str, str] = {}
    # First value wins: a repeated parameter cannot override an earlier one.
    for key, value in parse_qsl(query, keep_blank_values=True):
        values.setdefault(key, value)
    return path, values


class HeadReader:
    """
    Accumulates bytes until a complete head, an error, or the size limit.
    Each line is checked as soon as it is complete and the search resumes
    where it stopped, so a client trickling bytes costs linear work, and a
    bad line is refused without waiting for the rest. Bytes beyond
    C{max_bytes} are never kept. Once it has answered, the answer stays.
    """

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._buffer = bytearray()
        self._pos = 0            # start of the first line not yet looked at
        self._request: _RequestLine | None = None
        self._headers: dict[str, str] = {}
        self._over = False       # more than max_bytes came
        self._answer: RequestHead | HeadError | None = None

    @property
    def buffered(self) -> int:
        """How many bytes the reader keeps (never more than C{max_bytes} + 1)."""
        return len(self._buffer)

    def feed(self, data: bytes) -> RequestHead | HeadError | None:
        """Add C{data}; return the head, an error, or C{None} for "need more"."""
        if self._answer is None:
            self._answer = self._feed(data)
        return self._answer

    def _feed(self, data: bytes) -> RequestHead | HeadError | None:
        buffer, limit = self._buffer, self.max_bytes
        room = limit + 1 - len(buffer)
        if len(data) > room:
            self._over = True
        buffer += data[:max(room, 0)]
        window = min(len(buffer), limit)
        while (nl := buffer.find(b"\n", self._pos, window)) >= 0:
            line_start, self._pos = self._pos, nl + 1
            line = bytes(buffer[line_start:nl])
            if line.endswith(b"\r"):
                line = line[:-1]
                if b"\r" in line:
                    return HeadError(400, "CR without LF in the request head")
            elif b"\r" in line:
                return HeadError(400, "CR without LF in the request head")
            else:
                return HeadError(400, "line not ended by CRLF")
            verdict = self._line(line)
            if verdict is not None:
                if isinstance(verdict, RequestHead) and (self._over or len(buffer) > limit):
                    # Bytes after the head count too: nothing unbounded before the 101.
                    return HeadError(431, "request head too large")
                return verdict
        cr = buffer.find(b"\r", self._pos, window)
        if 0 <= cr < window - 1:
            return HeadError(400, "CR without LF in the request head")
        if self._over or len(buffer) > limit:
            return HeadError(431, "request head too large")
        return None

    def _line(self, line: bytes) -> RequestHead | HeadError | None:
        """Take one complete line (CRLF removed): a verdict, or None to go on."""
        if self._request is None:
            if not line:
                return HeadError(400, "empty line before the request line")
            request = _request_line(line)
            if isinstance(request, HeadError):
                return request
            self._request = request
            return None
        if not line:
            return self._finish(self._request)
        if line[:1] in (b" ", b"\t"):
            return HeadError(400, "obsolete header line folding")
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.match(name):
            return HeadError(400, "malformed header line")
        value = value.strip(b" \t")
        if _BAD_VALUE.search(value):
            return HeadError(400, "byte not allowed in a header value")
        key = name.decode("ascii").lower()
        text = value.decode("ascii")
        headers = self._headers
        if key in headers:
            if key in SINGLE_HEADERS:
                return HeadError(400, f"repeated {key} header")
            headers[key] = f"{headers[key]}, {text}"
        else:
            headers[key] = text
        return None

    def _finish(self, request: _RequestLine) -> RequestHead | HeadError:
        method, target, version, path, query = request
        if version == b"HTTP/1.1" and "host" not in self._headers:
            return HeadError(400, "missing Host header")
        return RequestHead(method=method.decode("ascii"), target=target.decode("ascii"),
                           path=path, query=query, version=version.decode("ascii"),
                           headers=self._headers, raw=bytes(self._buffer), size=self._pos)
