"""
Which address a connection counts against (per-IP admission, rates, audit
lines): the peer, unless the peer is a trusted proxy (C{limits.trusted_proxies})
that names the client in C{X-Forwarded-For}. The parent's door and both of
the shard's transports apply this one rule, so a client is the same client
wherever it is counted (docs/security.md).
"""

from __future__ import annotations

from collections.abc import Collection


def client_ip(peer: str, forwarded: str | None, trusted: Collection[str]) -> str:
    """
    C{peer}, or the last entry of C{forwarded} (the C{X-Forwarded-For}
    value) when C{peer} is in C{trusted}: the entry the trusted proxy
    appended itself, the only one a client cannot forge.
    """
    if forwarded and peer in trusted:
        return forwarded.split(",")[-1].strip() or peer
    return peer
