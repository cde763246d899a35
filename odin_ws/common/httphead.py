"""
A strict, bounded reader of HTTP/1.x request heads (request line + headers).

Pure code, no I/O: feed it bytes as they arrive and it answers "need more"
(C{None}), a parsed L{RequestHead}, or an L{HeadError} carrying the HTTP
status to answer with. It never raises on any input, so it is safe in front
of the public listener.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlsplit

#: RFC 9110 token characters (methods and header names).
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
#: Visible ASCII, what a request target may contain (no spaces, no controls).
_TARGET = re.compile(rb"[\x21-\x7e]+\Z")
_VERSION = re.compile(rb"HTTP/([0-9])\.([0-9])\Z")
#: Field values: visible bytes, spaces, tabs and obs-text; no other controls.
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
#: Empty lines tolerated before the request line (RFC 9112 section 2.2).
_MAX_LEADING_EMPTY = 4


@dataclass(frozen=True)
class RequestHead:
    """A parsed request head. C{headers} has lowercase names; repeats joined by ", "."""

    method: str
    target: str
    path: str
    query: dict[str, str]
    version: str
    headers: dict[str, str]
    #: Everything read so far: the head and any bytes that came after it.
    raw: bytes = field(repr=False)

    def header_has_token(self, name: str, token: str) -> bool:
        """Whether the comma-separated header C{name} lists C{token} (any case)."""
        value = self.headers.get(name, "")
        return token.lower() in (part.strip().lower() for part in value.split(","))


@dataclass(frozen=True)
class HeadError:
    """A request head that cannot be served: answer C{status} and close."""

    status: int
    reason: str


def parse(buffer: bytes, max_bytes: int) -> RequestHead | HeadError | None:
    """
    Parse the request head at the start of C{buffer}.

    @return: C{None} when the head is not complete yet (and C{buffer} is
        still within C{max_bytes}), a L{RequestHead}, or a L{HeadError}.
    """
    return HeadReader(max_bytes).feed(buffer)


def _finish(buffer: bytes, end: int, body_start: int, max_bytes: int) -> RequestHead | HeadError:
    if body_start > max_bytes:
        return HeadError(431, "request head too large")
    # buffer[:end] ends with the newline of the last header line.
    lines = [line.removesuffix(b"\r") for line in buffer[:end - 1].split(b"\n")]
    skipped = 0
    while lines and lines[0] == b"":
        lines.pop(0)
        skipped += 1
    if not lines or skipped > _MAX_LEADING_EMPTY:
        return HeadError(400, "missing request line")
    return _parse_lines(lines, buffer)


def _parse_lines(lines: list[bytes], raw: bytes) -> RequestHead | HeadError:
    parts = lines[0].split(b" ")
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
    path, query = located
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line[:1] in (b" ", b"\t"):
            return HeadError(400, "obsolete header line folding")
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.match(name):
            return HeadError(400, "malformed header line")
        value = value.strip(b" \t")
        if _BAD_VALUE.search(value):
            return HeadError(400, "control character in header value")
        key = name.decode("ascii").lower()
        text = value.decode("latin-1")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    if version == b"HTTP/1.1" and "host" not in headers:
        return HeadError(400, "missing Host header")
    return RequestHead(method=method.decode("ascii"), target=target.decode("ascii"),
                       path=path, query=query, version=version.decode("ascii"),
                       headers=headers, raw=raw)


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
    path = path.partition("#")[0]
    values: dict[str, str] = {}
    # First value wins: a repeated parameter cannot override an earlier one.
    for key, value in parse_qsl(query, keep_blank_values=True):
        values.setdefault(key, value)
    return path, values


class HeadReader:
    """
    Accumulates bytes until a complete head, an error, or the size limit.
    The search for the end of the head resumes where it stopped, so a client
    trickling bytes costs linear, not quadratic, work.
    """

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.buffer = b""
        self._pos = 0           # start of the first line not yet looked at
        self._seen_line = False  # a non-empty line came before self._pos

    def feed(self, data: bytes) -> RequestHead | HeadError | None:
        """Add C{data}; return the head, an error, or C{None} for "need more"."""
        self.buffer += data
        buffer = self.buffer
        while self._pos <= self.max_bytes:
            nl = buffer.find(b"\n", self._pos)
            if nl < 0:
                break
            line_start, self._pos = self._pos, nl + 1
            if buffer[line_start:nl] in (b"", b"\r"):
                if self._seen_line:
                    # The head ends at the first empty line after a non-empty one.
                    return _finish(buffer, line_start, nl + 1, self.max_bytes)
            else:
                self._seen_line = True
        if len(buffer) > self.max_bytes:
            return HeadError(431, "request head too large")
        return None
