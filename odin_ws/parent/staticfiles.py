"""
The files the parent serves on the public port: the JavaScript client at
L{CLIENT_LIBRARY_PATH} (always) and the demo page's files (with
C{demo.enabled}), read from disk per request, with every path that could
lead outside the page's directory refused.
"""

from __future__ import annotations

import os
from urllib.parse import unquote

#: Demo page files served from the static directory; nothing else is.
STATIC_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".png": "image/png",
    ".svg": "image/svg+xml",
}
MAX_STATIC_BYTES = 4 * 1024 * 1024
#: The JavaScript client (docs/protocol.md, "JavaScript client"), served at
#: CLIENT_LIBRARY_PATH on the public port whether or not the demo is enabled.
CLIENT_LIBRARY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                              "static", "odinws.js")
CLIENT_LIBRARY_PATH = "/odinws.js"


def client_library() -> bytes | None:
    """The JavaScript client's source, or None when it cannot be read."""
    try:
        with open(CLIENT_LIBRARY, "rb") as f:
            return f.read()
    except OSError:
        return None


def find(static_dir: str, path: str) -> tuple[bytes, str] | None:
    """
    The file of C{static_dir} (a real path) for the request path C{path}
    and its content type, or None (404).
    """
    name = unquote(path, errors="replace")
    if name == "/":
        name = "/index.html"
    parts = name.split("/")[1:]
    if ("\x00" in name or "\\" in name
            or any(p in ("", ".", "..") or p.startswith(".") for p in parts)):
        return None
    content_type = STATIC_TYPES.get(os.path.splitext(name)[1].lower())
    if content_type is None:
        return None
    full = os.path.realpath(os.path.join(static_dir, *parts))
    # realpath resolves symlinks: refuse anything that leads outside.
    if os.path.commonpath([static_dir, full]) != static_dir:
        return None
    if not os.path.isfile(full):
        return None
    try:
        # A blocking read in the reactor, acceptable for the small demo files.
        with open(full, "rb") as f:
            data = f.read(MAX_STATIC_BYTES + 1)
    except OSError:
        return None
    if len(data) > MAX_STATIC_BYTES:
        return None
    return data, content_type
