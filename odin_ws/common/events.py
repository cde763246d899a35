"""
One Kafka record after mapping: its channel, its outbound envelope (built
once, here, never per client), and where it came from in Kafka.

The envelope is the exact text message a client receives::

    {"type":"event","channel":"odin.token.ABC.trade","data":<value>,"ts":<ms>,
     "pos":"<topic>:<partition>:<epoch>:<offset>"}

C{pos} is the event's position (L{odin_ws.shard.history.positions}), for recovery.

Besides the envelope an event carries, for odinws only: C{epoch}, the tag of
the topic's incarnation (L{odin_ws.shard.history.positions.epoch_of} of the cluster
and topic ids; C{""} or C{"0"} when unknown), so the de-duplication marks
(L{odin_ws.common.highwater}) can tell a recreated topic's offsets from
re-reads; and C{consumed}, when the consuming shard took the record from
Kafka (seconds since the epoch), so every shard can split delivery latency
into the broker's share and odinws's own, relay included.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import NamedTuple

from odin_ws.common.channels import channel_name


class Partition(NamedTuple):
    """
    One Kafka partition: the key of everything kept per partition (offsets,
    de-duplication marks, history, positions). A plain tuple underneath, so
    a C{(topic, partition)} built on a hot path finds the same dict entry.
    """

    topic: str
    partition: int

    def label(self) -> str:
        """C{topic[partition]}, as logs and C{/health} show it."""
        return f"{self.topic}[{self.partition}]"


# The envelope, filled in by one formatting per event (a list joined cost
# twice the bytecodes: docs/performance.md, "History and the envelope").
_WITHOUT_POS = b'{"type":"event","channel":"odin.token.%s.%s","data":%s,"ts":%d}'
_WITH_POS = b'{"type":"event","channel":"odin.token.%s.%s","data":%s,"ts":%d,"pos":"%s:%d:%s:%d"}'


class Event:
    __slots__ = ("channel", "token", "event_type", "envelope", "ts", "topic",
                 "partition", "offset", "epoch", "consumed")

    def __init__(self, token: str, event_type: str, envelope: bytes, ts: int,
                 topic: str, partition: int, offset: int, epoch: str = "",
                 consumed: float = 0.0):
        self.token = token
        self.event_type = event_type
        self.channel = channel_name(token, event_type)
        self.envelope = envelope
        self.ts = ts
        self.topic = topic
        self.partition = partition
        self.offset = offset
        self.epoch = epoch
        self.consumed = consumed

    @classmethod
    def build(cls, token: str, event_type: str, data_json: bytes, ts: int,
              topic: str = "", partition: int = 0, offset: int = 0, epoch: str = "",
              consumed: float = 0.0) -> Event:
        """
        Wrap an already-validated JSON value into the envelope. C{token} and
        C{event_type} are valid channel segments (no quoting needed).
        """
        if topic:
            # The position (docs/protocol.md): topic:partition:epoch:offset.
            envelope = _WITH_POS % (token.encode("ascii"), event_type.encode("ascii"), data_json,
                                    ts, topic.encode("utf-8"), partition,
                                    (epoch or "0").encode("ascii"), offset)
        else:
            envelope = _WITHOUT_POS % (token.encode("ascii"), event_type.encode("ascii"),
                                       data_json, ts)
        return cls(token, event_type, envelope, ts, topic, partition, offset, epoch, consumed)

    def __repr__(self) -> str:
        return (f"<Event {self.channel} {self.topic}[{self.partition}]@{self.offset}"
                f" {len(self.envelope)}B>")


# Batch wire format for the hub (AMP BigBytes): per event a fixed header
# then the variable fields. Little-endian; lengths in bytes. Parent and
# shards always run the same code, so the format has no version.
# ts, offset, consumed, partition, len(topic), len(token), len(type), len(epoch), len(envelope)
_HEAD = struct.Struct("<qqdiHHHBI")


def encode_batch(events: Iterable[Event]) -> bytes:
    parts = []
    for e in events:
        topic = e.topic.encode("utf-8")
        token = e.token.encode("ascii")
        etype = e.event_type.encode("ascii")
        epoch = e.epoch.encode("ascii")
        parts.append(_HEAD.pack(e.ts, e.offset, e.consumed, e.partition, len(topic),
                                len(token), len(etype), len(epoch), len(e.envelope)))
        parts.append(topic)
        parts.append(token)
        parts.append(etype)
        parts.append(epoch)
        parts.append(e.envelope)
    return b"".join(parts)


def decode_batch(data: bytes) -> list[Event]:
    """
    Inverse of L{encode_batch}.

    @raise ValueError: on truncated or malformed input.
    """
    out = []
    pos = 0
    size = _HEAD.size
    end = len(data)
    while pos < end:
        if pos + size > end:
            raise ValueError("truncated event header")
        ts, offset, consumed, partition, lt, lk, le, lp, lv = _HEAD.unpack_from(data, pos)
        pos += size
        stop = pos + lt + lk + le + lp + lv
        if stop > end:
            raise ValueError("truncated event body")
        topic = data[pos:pos + lt].decode("utf-8")
        pos += lt
        token = data[pos:pos + lk].decode("ascii")
        pos += lk
        etype = data[pos:pos + le].decode("ascii")
        pos += le
        epoch = data[pos:pos + lp].decode("ascii")
        pos += lp
        envelope = data[pos:stop]
        pos = stop
        out.append(Event(token, etype, envelope, ts, topic, partition, offset, epoch, consumed))
    return out
