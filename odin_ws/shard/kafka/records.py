"""
Kafka record -> L{Event}: decode the value by the topic's format
(L{odin_ws.shard.kafka.valueformats}), find the token id and the event type
where the topic's options say (key, header or field; topic, header or
field), and wrap the value's JSON into the envelope.

A record that cannot be mapped yields one of L{REASONS} instead of raising,
so the consumer can count it (C{odinws_kafka_rejected{reason}}) and move on.
A record whose value cannot be decoded (L{GIVEN_UP}) but whose channel is
known without it (token id from the key or a header, event type from the
topic or a header) yields a L{Hole} instead: its subscribers are told
(L{odin_ws.shard.history.holes}). Where the channel is in the value itself
nobody can be told: the record is counted
(C{odinws_kafka_untold{reason}}) as well as rejected.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from odin_ws.common import metrics, topicoptions
from odin_ws.common.channels import valid_segment
from odin_ws.common.events import Event
from odin_ws.common.settings import KafkaSettings
from odin_ws.common.topicoptions import Origin, Source, TopicOptions
from odin_ws.shard.history.holes import Hole
from odin_ws.shard.kafka.valueformats import UNDECODABLE, Decoded, ValueDecoder

REASONS = ("unknown_topic", "no_value", "too_large", "invalid_json", *UNDECODABLE, "no_token",
           "invalid_token", "invalid_event_type")
#: Reasons of records whose value odinws gave up on (they become holes when
#: their channel is known without the value).
GIVEN_UP = ("too_large", "invalid_json", *UNDECODABLE)

#: A record's headers as confluent-kafka gives them (C{Message.headers()}).
Headers = Sequence[tuple[str, bytes | None]] | None


class RecordMapper:
    """
    Maps records of the configured topics to events.

    @param options: topic -> how its records are read (L{TopicOptions};
        C{kafka.topics} and C{kafka.topic_options}).
    @param event_types: topic -> its event type (C{kafka.topics}).
    @param decoder: decodes values by format.
    @param max_record_bytes: larger values are rejected before decoding.
    @param clock: seconds since the epoch, for records without a timestamp.
    """

    def __init__(self, event_types: Mapping[str, str], options: Mapping[str, TopicOptions],
                 decoder: ValueDecoder, max_record_bytes: int,
                 clock: Callable[[], float] = time.time):
        self.event_types = dict(event_types)
        self.options = dict(options)
        self.decoder = decoder
        self.max_record_bytes = max_record_bytes
        self._clock = clock

    @classmethod
    def from_settings(cls, kafka: KafkaSettings, decoder: ValueDecoder | None = None,
                      clock: Callable[[], float] = time.time) -> RecordMapper:
        """The mapper the C{kafka} settings describe (JSON only without a C{decoder})."""
        options = topicoptions.for_topics(kafka.topics, kafka.topic_options, kafka.token_field,
                                          kafka.event_type_field)
        return cls(kafka.topics, options, decoder or ValueDecoder(None), kafka.max_record_bytes,
                   clock)

    def map(self, topic: str, key: bytes | None, value: bytes | None, timestamp_ms: int,
            partition: int, offset: int, epoch: str = "",
            headers: Callable[[], Headers] | None = None) -> Event | str:
        """
        The record's L{Event}, or the reason (one of L{REASONS}) it is skipped,
        or a L{Hole} when its value was given up on (L{GIVEN_UP}) but its
        channel is known. C{epoch} names the topic's incarnation; it is part
        of the position.
        C{headers} gives the record's headers (called only when a topic's
        options read one: building them costs a list per record).
        """
        options = self.options.get(topic)
        if options is None:
            return "unknown_topic"
        if not value:
            return "no_value"
        if len(value) > self.max_record_bytes:
            return self._hole("too_large", topic, options, key, headers, timestamp_ms,
                              partition, offset, epoch)
        decoded = self.decoder.decode(options.format, value, topic, partition, offset)
        if isinstance(decoded, str):
            return self._hole(decoded, topic, options, key, headers, timestamp_ms, partition,
                              offset, epoch)

        raw = _read(options.token, key, decoded, headers)
        if raw is None:
            return "no_token"
        # bool is an int subclass, but true/false is no token id.
        if isinstance(raw, bool) or not isinstance(raw, (str, int)):
            return "invalid_token"
        token = str(raw)
        if not valid_segment(token):
            return "invalid_token"

        event_type = self.event_types[topic]
        if options.event_type.origin is not Origin.TOPIC:
            named = _read(options.event_type, None, decoded, headers)
            if named is not None:
                if not isinstance(named, str) or not valid_segment(named):
                    return "invalid_event_type"
                event_type = named

        if timestamp_ms < 0:
            timestamp_ms = int(self._clock() * 1000)
        return Event.build(token, event_type, decoded.json, timestamp_ms, topic, partition,
                           offset, epoch)

    def _hole(self, reason: str, topic: str, options: TopicOptions, key: bytes | None,
              headers: Callable[[], Headers] | None, timestamp_ms: int, partition: int,
              offset: int, epoch: str) -> Hole | str:
        """
        The L{Hole} of a record whose value was given up on for C{reason},
        or C{reason} when its channel needs the value (counted: untold).
        """
        token = event_type = None
        if options.token.origin is not Origin.FIELD:
            raw = _read(options.token, key, _NOTHING, headers)
            if isinstance(raw, str) and valid_segment(raw):
                token = raw
        origin = options.event_type.origin
        if origin is Origin.TOPIC:
            event_type = self.event_types[topic]
        elif origin is Origin.HEADER:
            # A header that is absent means the topic's type, as for an event.
            named = _read(options.event_type, None, _NOTHING, headers)
            if named is None:
                event_type = self.event_types[topic]
            elif isinstance(named, str) and valid_segment(named):
                event_type = named
        if token is None or event_type is None:
            metrics.KAFKA_UNTOLD.labels(reason).inc()
            return reason
        if timestamp_ms < 0:
            timestamp_ms = int(self._clock() * 1000)
        return Hole(reason, token, event_type, timestamp_ms, topic, partition, offset, epoch)


def _read(source: Source, key: bytes | None, decoded: Decoded,
          headers: Callable[[], Headers] | None) -> Any:
    """
    The value at C{source}: a str for a key or header (None when absent or
    not UTF-8: an L{_INVALID} marker then), the field's value for a field.
    """
    if source.origin is Origin.FIELD:
        return None if decoded.fields is None else decoded.fields.get(source.name)
    if source.origin is Origin.KEY:
        raw = key
    else:
        raw = None
        for name, data in (headers() if headers is not None else None) or ():
            if name == source.name:
                raw = data  # the last one wins, as Kafka Streams reads headers
    if not raw:
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return _INVALID


#: A key or header that is not UTF-8: no valid token id or event type.
_INVALID = object()
#: The value of a record given up on: no fields to read.
_NOTHING = Decoded(b"null", None)
