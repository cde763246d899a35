"""
What a client's request may be turned down for before its connection
opens (L{Refused}), and the one rule for a well-formed C{Origin}: the
session raises them, each transport answers them its own way (a refused
WebSocket handshake, an SSE error response), counted the same.
"""

from __future__ import annotations

import json
from urllib.parse import urlsplit


class Refused(Exception):
    """
    A request turned down before its connection opens; the transport answers
    it in its own way (an HTTP status, a JSON body).

    @ivar status: the HTTP status.
    @ivar reason: the C{reason} label of C{odinws_rejected_total} and the audit line.
    @ivar message: what the client is told.
    @ivar code: the machine-readable code of docs/protocol.md, when there is one.
    @ivar headers: extra response headers (C{Retry-After}).
    """

    def __init__(self, status: int, reason: str, message: str, code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(reason)
        self.status, self.reason, self.message = status, reason, message
        self.code = code
        self.headers = headers or {}

    def body(self) -> bytes:
        """The refusal as the JSON of an error message, C{{"code":...,"message":...}}."""
        return json.dumps({"code": self.code or self.reason, "message": self.message},
                          separators=(",", ":")).encode("ascii")


def is_origin(value: str) -> bool:
    """
    Whether an C{Origin} header is one (RFC 6454: C{null}, or
    C{scheme://host[:port]}; Autobahn also takes a C{file:} URL for
    C{null}), as Autobahn parses it: what it cannot parse it refuses before
    the session sees it, so the event stream refuses the same.
    """
    if value.lower() == "null":
        return True
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError when out of range
    except ValueError:
        return False
    return parts.scheme.lower() == "file" or bool(parts.hostname)


def bad_origin() -> Refused:
    """The refusal of a malformed C{Origin}: 400, on both transports."""
    return Refused(400, "bad_origin", "Origin is neither null nor scheme://host[:port]",
                   "invalid_origin")
