"""
Channel names: C{odin.token.<tokenId>.<eventType>}, where a C{*} segment is
a wildcard in subscriptions (never in event channels).
"""

from __future__ import annotations

import re

PREFIX = "odin.token."
WILDCARD = "*"

_SEGMENT = re.compile(r"[A-Za-z0-9_:\-]{1,128}\Z")


class InvalidChannel(ValueError):
    """A channel name that does not follow C{odin.token.<tokenId>.<eventType>}."""


def valid_segment(segment: str) -> bool:
    """Is C{segment} usable as a token id or event type (no dots, no wildcard)?"""
    return bool(_SEGMENT.match(segment))


def channel_name(token: str, event_type: str) -> str:
    return f"{PREFIX}{token}.{event_type}"


def parse_pattern(name: object, max_length: int = 160) -> tuple[str, str]:
    """
    Split a subscription channel into C{(token, event_type)}; either may be
    L{WILDCARD}.

    @raise InvalidChannel: with a human-readable reason.
    """
    if not isinstance(name, str):
        raise InvalidChannel("channel names must be strings")
    if len(name) > max_length:
        raise InvalidChannel(f"channel name longer than {max_length} characters")
    if not name.startswith(PREFIX):
        raise InvalidChannel(f"channel must look like {PREFIX}<tokenId>.<eventType>")
    parts = name[len(PREFIX):].split(".")
    if len(parts) != 2:
        raise InvalidChannel(f"channel must look like {PREFIX}<tokenId>.<eventType>")
    for part in parts:
        if part != WILDCARD and not valid_segment(part):
            raise InvalidChannel(
                "token id and event type are 1-128 of A-Z a-z 0-9 _ - : or a lone '*'")
    return parts[0], parts[1]
