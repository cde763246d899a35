"""
Tokens (docs/protocol.md, "Connecting" and "refresh"): a JWT's ``exp`` is
read, not verified (the server verifies), to refresh the token before it
expires; a token provider is any callable returning a token, sync or async.
"""

from __future__ import annotations

import base64
import binascii
import inspect
import json
from collections.abc import Awaitable, Callable

#: A callable giving a fresh JWT: ``def get() -> str`` or ``async def get() -> str``.
TokenProvider = Callable[[], str | Awaitable[str]]


class TokenError(Exception):
    """The token provider failed or gave no token."""


def token_expiry(token: str | None) -> float | None:
    """The ``exp`` claim (seconds since the epoch) of a JWT, unverified; None if it has none."""
    if not token:
        return None
    parts = token.split(".")
    if len(parts) != 3:
        return None
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload))
    except (binascii.Error, ValueError):
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    if isinstance(exp, bool) or not isinstance(exp, (int, float)):
        return None
    return float(exp)


def refresh_delay(exp: float, now: float, margin: float) -> float:
    """
    Seconds from ``now`` until a token expiring at ``exp`` should be
    refreshed: ``margin`` seconds before ``exp``, or halfway through what is
    left of its life when that is later (a short-lived token would otherwise
    be refreshed at once, again and again).
    """
    left = exp - now
    return max(0.0, left - margin, left / 2)


async def fetch_token(provider: TokenProvider) -> str:
    """Call ``provider`` (awaiting it if it is async); L{TokenError} unless it gives a token."""
    try:
        token = provider()
        if inspect.isawaitable(token):
            token = await token
    except Exception as e:
        raise TokenError(f"token provider failed: {e!r}") from e
    if not isinstance(token, str) or not token:
        raise TokenError(f"token provider gave no token: {token!r}")
    return token
