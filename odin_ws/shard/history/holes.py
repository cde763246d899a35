"""
Holes: Kafka records odinws could not decode (bad JSON, an unknown schema,
a corrupt Avro or Protobuf value, a value over C{kafka.max_record_bytes})
but whose channel it knows (token id from the key or a header, event type
from the topic or a header). Such a record is not skipped silently: it
becomes a hole, an L{Event} whose envelope is the C{gap} message its
subscribers get in its place (docs/protocol.md, "gap", C{undecodable}):

    {"type":"gap","reason":"undecodable","detail":"invalid_json",
     "channel":"odin.token.ABC.trade","streams":{"t:0:e":"t:0:e:41"}}

Because it is an event in every other respect (channel, position,
timestamp), it takes every path an event takes with no test on the way:
de-duplication, the hub relay to every shard, history, live fan-out,
catch-up and recovery (a recovery across it replays the notice in its
place, so C{recovered: true} never hides it). The few places that read an
envelope's C{data} (options, SSE's named events, snapshots) ask
L{is_hole}. The position the notice names is the hole's own: nothing can
fill it, and a client resuming from it misses nothing else.
"""

from __future__ import annotations

import json

from odin_ws.common.channels import channel_name
from odin_ws.common.events import Event
from odin_ws.shard.history import positions

#: The C{reason} of a hole's C{gap} message.
UNDECODABLE = "undecodable"

#: How every hole's envelope starts (an event's starts with C{{"type":"event"}).
PREFIX = b'{"type":"gap"'


class Hole(Event):
    """
    A hole as the consumer made it: an L{Event} that also names why its
    record was rejected (C{odinws_kafka_rejected{reason}}). Relayed to
    other shards it arrives as a plain L{Event}: only the consumer counts.
    """

    __slots__ = ("reason",)

    def __init__(self, reason: str, token: str, event_type: str, ts: int, topic: str,
                 partition: int, offset: int, epoch: str = ""):
        stream = f"{topic}:{partition}:{epoch or '0'}"
        body = {"type": "gap", "reason": UNDECODABLE, "detail": reason,
                "channel": channel_name(token, event_type),
                "streams": {stream: positions.encode(topic, partition, epoch or "0", offset)}}
        envelope = json.dumps(body, separators=(",", ":")).encode()
        super().__init__(token, event_type, envelope, ts, topic, partition, offset, epoch)
        self.reason = reason


def is_hole(event: Event) -> bool:
    """Whether C{event} is a hole (made here, or relayed and decoded as an L{Event})."""
    return event.envelope.startswith(PREFIX)
