"""
The reconnect contract of docs/protocol.md ("Reconnect contract" and "Close
codes"): what a client does after its connection closed or could not open,
and how long it waits. Pure functions, so the rules are tested on their own.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable

#: Seconds: the contract's base and cap of the exponential backoff.
BACKOFF_BASE = 0.5
BACKOFF_CAP = 30.0

NORMAL = 1000
ABNORMAL = 1006
TOKEN_EXPIRED = 4001
#: Retrying after these fails the same way: the client has to change first
#: (protocol error, unsupported data, invalid UTF-8, sustained rate
#: limiting, message too big).
FINAL_CODES = frozenset({1002, 1003, 1007, 1008, 1009})
#: HTTP answers to the upgrade that are worth trying again (timeout, too
#: many connections, no room).
RETRY_STATUSES = frozenset({408, 429})
UNAUTHORIZED = 401


class Action(enum.Enum):
    """What to do after a connection ended."""

    #: Reconnect after the backoff delay.
    RECONNECT = "reconnect"
    #: Get a new token from the token provider, then reconnect (backoff).
    NEW_TOKEN = "new_token"
    #: The server's idle close: reconnect when something is subscribed again.
    IDLE = "idle"
    #: Do not reconnect: retrying would fail the same way.
    STOP = "stop"


def backoff_delay(attempt: int, base: float = BACKOFF_BASE, cap: float = BACKOFF_CAP,
                  rand: Callable[[], float] = random.random) -> float:
    """
    Seconds before reconnect attempt ``attempt`` (0, 1, ...): full jitter,
    ``rand() * min(cap, base * 2 ** attempt)``. Full jitter matters: a
    node that restarts closes thousands of connections at once, and clients
    retrying after one fixed delay would all come back together.
    """
    return rand() * min(cap, base * 2.0 ** min(attempt, 64))


def after_close(code: int, subscribed: bool, can_get_token: bool) -> Action:
    """
    What a close with ``code`` (1006 when the connection dropped without a
    close frame) asks for. ``subscribed``: the client holds subscriptions;
    ``can_get_token``: it has a token provider.

    1001, 1006, 1011 (from a proxy), 4000 (server restarting), 4008 (slow
    consumer) and any code the contract does not name reconnect with
    backoff; 1000 too while something is subscribed (with nothing it is the
    server's idle close); 4001 (token expired) wants a new token, and stops
    without a provider; L{FINAL_CODES} stop.
    """
    if code in FINAL_CODES:
        return Action.STOP
    if code == TOKEN_EXPIRED:
        return Action.NEW_TOKEN if can_get_token else Action.STOP
    if code == NORMAL and not subscribed:
        return Action.IDLE
    return Action.RECONNECT


def after_refusal(status: int, can_get_token: bool) -> Action:
    """
    What an HTTP ``status`` answering the upgrade asks for: 5xx (503: no
    room, draining), 408 and 429 are tried again; 401 with a token provider
    gets a new token first; any other 4xx fails the same way again (a bad
    channel in the URL, a refused Origin, no token, a wrong path).
    """
    if status >= 500 or status in RETRY_STATUSES:
        return Action.RECONNECT
    if status == UNAUTHORIZED and can_get_token:
        return Action.NEW_TOKEN
    return Action.STOP


def retry_after(value: str | None) -> float:
    """Seconds of a ``Retry-After`` header (delta-seconds form); 0 if absent or not one."""
    if value is None:
        return 0.0
    try:
        seconds = float(value.strip())
    except ValueError:
        return 0.0
    return seconds if 0 < seconds < 86400 else 0.0
