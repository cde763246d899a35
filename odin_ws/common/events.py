"""
One Kafka record after mapping: its channel, its outbound envelope (built
once, here, never per client), and where it came from in Kafka.

The envelope is the exact text message a client receives::

    {"type":"event","channel":"odin.token.ABC.trade","data":<value>,"ts":<ms>}

(The planned history feature adds a position field next to "ts".)
"""

from __future__ import annotations

import struct
from typing import Iterable

from odin_ws.common.channels import channel_name


class Event:
    __slots__ = ("channel", "token", "event_type", "envelope", "ts", "topic",
                 "partition", "offset")

    def __init__(self, token: str, event_type: str, envelope: bytes, ts: int,
                 topic: str, partition: int, offset: int):
        self.token = token
        self.event_type = event_type
        self.channel = channel_name(token, event_type)
        self.envelope = envelope
        self.ts = ts
        self.topic = topic
        self.partition = partition
        self.offset = offset

    @classmethod
    def build(cls, token: str, event_type: str, data_json: bytes, ts: int,
              topic: str = "", partition: int = 0, offset: int = 0) -> "Event":
        """
        Wrap an already-validated JSON value into the envelope. C{token} and
        C{event_type} are valid channel segments (no quoting needed).
        """
        envelope = b"".join((
            b'{"type":"event","channel":"odin.token.', token.encode("ascii"), b".",
            event_type.encode("ascii"), b'","data":', data_json, b',"ts":',
            b"%d" % ts, b"}"))
        return cls(token, event_type, envelope, ts, topic, partition, offset)

    def __repr__(self) -> str:
        return (f"<Event {self.channel} {self.topic}[{self.partition}]@{self.offset}"
                f" {len(self.envelope)}B>")


# Batch wire format for the hub (AMP BigBytes): per event a fixed header
# then the variable fields. Little-endian; lengths in bytes.
_HEAD = struct.Struct("<qqiHHHI")  # ts, offset, partition, len(topic), len(token), len(type), len(envelope)


def encode_batch(events: Iterable[Event]) -> bytes:
    parts = []
    for e in events:
        topic = e.topic.encode("utf-8")
        token = e.token.encode("ascii")
        etype = e.event_type.encode("ascii")
        parts.append(_HEAD.pack(e.ts, e.offset, e.partition, len(topic), len(token),
                                len(etype), len(e.envelope)))
        parts.append(topic)
        parts.append(token)
        parts.append(etype)
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
        ts, offset, partition, lt, lk, le, lv = _HEAD.unpack_from(data, pos)
        pos += size
        stop = pos + lt + lk + le + lv
        if stop > end:
            raise ValueError("truncated event body")
        topic = data[pos:pos + lt].decode("utf-8")
        pos += lt
        token = data[pos:pos + lk].decode("ascii")
        pos += lk
        etype = data[pos:pos + le].decode("ascii")
        pos += le
        envelope = data[pos:stop]
        pos = stop
        out.append(Event(token, etype, envelope, ts, topic, partition, offset))
    return out
