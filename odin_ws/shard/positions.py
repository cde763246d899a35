"""
Positions: where an event sits in Kafka, as the compact string a client
stores and sends back unchanged (docs/protocol.md, "Positions and
recovery"). Clients treat it as opaque.

    <topic>:<partition>:<epoch>:<offset>      e.g. odin.trades:3:1k9x2f:12345

C{epoch} names the incarnation of the topic (a recreated topic, or the same
name on another cluster, has another epoch), so a position is never taken
for one of a different topic's events. Everything before the last C{:} is the
position's I{stream}: a client keeps the last position it saw per stream.
Every node reads every partition (one consumer group per node), so a
position means the same on every node and every shard.
"""

from __future__ import annotations

import hashlib
import re

#: Kafka topic names: 1-249 of these characters.
_TOPIC = r"[A-Za-z0-9._-]{1,249}"
_POSITION = re.compile(rf"^({_TOPIC}):(\d{{1,9}}):([0-9a-z]{{1,16}}):(\d{{1,19}})$")
#: Longest position string accepted from a client.
MAX_LENGTH = 300


class InvalidPosition(ValueError):
    """A position a client sent cannot be parsed."""


def epoch_of(*identity: str) -> str:
    """
    The epoch tag of a topic incarnation from what identifies it (cluster
    id, topic id): a short base-36 hash, or C{"0"} when nothing is known.
    """
    parts = [p for p in identity if p]
    if not parts:
        return "0"
    digest = hashlib.blake2b("\x00".join(parts).encode("utf-8"), digest_size=5).digest()
    return _base36(int.from_bytes(digest, "big"))


def _base36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = digits[r] + out
        if not n:
            return out


def encode(topic: str, partition: int, epoch: str, offset: int) -> str:
    return f"{topic}:{partition}:{epoch}:{offset}"


def decode(text: object) -> tuple[str, int, str, int]:
    """
    C{(topic, partition, epoch, offset)} of a position string.

    @raise InvalidPosition: C{text} is not a position.
    """
    if not isinstance(text, str) or len(text) > MAX_LENGTH:
        raise InvalidPosition("a position is a string like topic:partition:epoch:offset")
    m = _POSITION.match(text)
    if m is None:
        raise InvalidPosition(f"malformed position {text[:80]!r}")
    return m.group(1), int(m.group(2)), m.group(3), int(m.group(4))
