"""
The parent's own HTTP answers: the few complete responses it writes itself
(C{/health}, C{/metrics}, static files, refusals) before closing; everything
else is handed to a shard unread. Always HTTP/1.1, C{Connection: close},
never cached.
"""

from __future__ import annotations

from collections.abc import Sequence
from http import HTTPStatus

METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"
TEXT_TYPE = "text/plain; charset=utf-8"
JSON_TYPE = "application/json"


def phrase(status: int) -> str:
    """The reason phrase of C{status} ("Error" for a code HTTP does not name)."""
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def response_head(status: int, content_type: str, length: int,
                  headers: Sequence[tuple[str, str]] = ()) -> bytes:
    """The status line and headers of a complete response of C{length} bytes."""
    lines = [f"HTTP/1.1 {status} {phrase(status)}",
             f"Content-Type: {content_type}",
             f"Content-Length: {length}",
             "Connection: close",
             "Cache-Control: no-store"]
    lines += [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def refusal_headers(status: int, retry_after: int | float | None) -> list[tuple[str, str]]:
    """
    The headers a refusal needs: C{Retry-After} on 429 and 503 (when given),
    C{Allow} on 405, C{Upgrade} on 426.
    """
    headers: list[tuple[str, str]] = []
    if status in (429, 503) and retry_after is not None:
        headers.append(("Retry-After", str(retry_after)))
    if status == 405:
        headers.append(("Allow", "GET, HEAD"))
    if status == 426:
        headers.append(("Upgrade", "websocket"))
    return headers
