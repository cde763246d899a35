"""
Kafka record -> L{Event}: validate the value as JSON, find the token id and
the event type, and wrap the value's own bytes into the envelope.

A record that cannot be mapped yields one of L{REASONS} instead of raising,
so the consumer can count it (C{odinws_kafka_rejected{reason}}) and move on.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping

from odin_ws.common.channels import valid_segment
from odin_ws.common.events import Event
from odin_ws.common.settings import KafkaSettings

REASONS = ("unknown_topic", "no_value", "too_large", "invalid_json", "no_token",
           "invalid_token", "invalid_event_type")

# Whitespace JSON allows around a value; stripped so envelopes stay compact.
_JSON_SPACE = b" \t\r\n"


def _reject_constant(name: str) -> None:
    # json.loads accepts NaN/Infinity/-Infinity, which are not JSON: a browser's
    # JSON.parse would choke on the envelope.
    raise ValueError(f"{name} is not JSON")


class RecordMapper:
    """
    Maps records of the configured topics to events.

    @param topics: topic -> event type (C{kafka.topics}).
    @param token_field: JSON field holding the token id; empty: the record key.
    @param event_type_field: JSON field overriding the topic's event type when
        present (and not null); empty: the topic decides.
    @param max_record_bytes: larger values are rejected before parsing.
    @param clock: seconds since the epoch, for records without a timestamp.
    """

    def __init__(self, topics: Mapping[str, str], token_field: str, event_type_field: str,
                 max_record_bytes: int, clock: Callable[[], float] = time.time):
        self.topics = dict(topics)
        self.token_field = token_field
        self.event_type_field = event_type_field
        self.max_record_bytes = max_record_bytes
        self._clock = clock

    @classmethod
    def from_settings(cls, kafka: KafkaSettings,
                      clock: Callable[[], float] = time.time) -> RecordMapper:
        """The mapper the C{kafka} settings describe."""
        return cls(kafka.topics, kafka.token_field, kafka.event_type_field,
                   kafka.max_record_bytes, clock)

    def map(self, topic: str, key: bytes | None, value: bytes | None, timestamp_ms: int,
            partition: int, offset: int, epoch: str = "") -> Event | str:
        """
        The record's L{Event}, or the reason (one of L{REASONS}) it is skipped.
        C{epoch} names the topic's incarnation; it is part of the position.
        """
        topic_type = self.topics.get(topic)
        if topic_type is None:
            return "unknown_topic"
        if not value:
            return "no_value"
        if len(value) > self.max_record_bytes:
            return "too_large"
        try:
            data = json.loads(value.decode("utf-8"), parse_constant=_reject_constant)
        except (ValueError, RecursionError):
            # ValueError covers UnicodeDecodeError and JSONDecodeError (a BOM
            # included); RecursionError is a value nested thousands deep.
            return "invalid_json"
        fields = data if isinstance(data, dict) else None

        if self.token_field:
            if fields is None or fields.get(self.token_field) is None:
                return "no_token"
            raw = fields[self.token_field]
            # bool is an int subclass, but true/false is no token id.
            if isinstance(raw, bool) or not isinstance(raw, (str, int)):
                return "invalid_token"
            token = str(raw)
        else:
            if not key:
                return "no_token"
            try:
                token = key.decode("utf-8")
            except UnicodeDecodeError:
                return "invalid_token"
        if not valid_segment(token):
            return "invalid_token"

        event_type = topic_type
        if self.event_type_field and fields is not None \
                and fields.get(self.event_type_field) is not None:
            event_type = fields[self.event_type_field]
            if not isinstance(event_type, str) or not valid_segment(event_type):
                return "invalid_event_type"

        if timestamp_ms < 0:
            timestamp_ms = int(self._clock() * 1000)
        # The value parsed as strict UTF-8 JSON, so its bytes are a valid JSON
        # value as they are: embed them without re-serializing.
        return Event.build(token, event_type, value.strip(_JSON_SPACE), timestamp_ms,
                           topic, partition, offset, epoch)
