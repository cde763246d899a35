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
# re.ASCII: without it \d takes any Unicode digit, and int() reads
# Arabic-Indic "١٢" as 12 (issue 23); fullmatch, since "$" allows a
# final newline.
_POSITION = re.compile(rf"({_TOPIC}):(\d{{1,9}}):([0-9a-z]{{1,16}}):(\d{{1,19}})", re.ASCII)
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
    m = _POSITION.fullmatch(text)
    if m is None:
        raise InvalidPosition(f"malformed position {text[:80]!r}")
    return m.group(1), int(m.group(2)), m.group(3), int(m.group(4))


# -- position vectors: the SSE event id (docs/protocol.md, "Event ids")
#
#     <topic>~<epoch>~<partition>:<offset>,<partition>:<offset>;<topic2>~...
#
# One group per topic and epoch, partitions ascending. EventSource sends
# back only the last id it saw, so the id must name every partition's
# position at once; "~" and ";" cannot occur in a topic or an epoch.

_GROUP = re.compile(rf"({_TOPIC})~([0-9a-z]{{1,16}})~(\d{{1,9}}:\d{{1,19}}(?:,\d{{1,9}}:\d{{1,19}})*)",
                    re.ASCII)


def encode_group(topic: str, partitions: dict[int, tuple[str, int]]) -> str:
    """The vector groups of one topic: C{partitions} maps partition -> (epoch, offset)."""
    by_epoch: dict[str, list[str]] = {}
    for partition in sorted(partitions):
        epoch, offset = partitions[partition]
        by_epoch.setdefault(epoch, []).append(f"{partition}:{offset}")
    return ";".join(f"{topic}~{epoch}~{','.join(parts)}" for epoch, parts in by_epoch.items())


def decode_vector(text: str, max_positions: int) -> dict[tuple[str, int], tuple[str, int]]:
    """
    C{(topic, partition) -> (epoch, offset)} of a position vector.

    @raise InvalidPosition: not a vector, or a partition named twice.
    @raise ValueError: more than C{max_positions} positions (the message
        says so; L{InvalidPosition} is a ValueError too, test it first).
    """
    out: dict[tuple[str, int], tuple[str, int]] = {}
    for group in text.split(";"):
        m = _GROUP.fullmatch(group)
        if m is None:
            raise InvalidPosition(f"malformed position vector group {group[:80]!r}")
        topic, epoch = m.group(1), m.group(2)
        for pair in m.group(3).split(","):
            partition, _, offset = pair.partition(":")
            key = (topic, int(partition))
            if key in out:
                raise InvalidPosition(f"two positions for partition {partition} of {topic[:80]!r}")
            out[key] = (epoch, int(offset))
            if len(out) > max_positions:
                raise TooManyPositions(f"at most {max_positions} positions")
    return out


class TooManyPositions(ValueError):
    """More positions than a subscribe may carry."""
