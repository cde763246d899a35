"""
The JSON text protocol between a client and a shard (see docs/protocol.md):
parsing client messages and encoding the server's replies. Pure functions,
no I/O; the WebSocket layer decides what to do with each result.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

from odin_ws.common.channels import InvalidChannel, parse_pattern
from odin_ws.shard.history import positions

# Error codes: stable, machine-readable, part of the public protocol.
INVALID_JSON = "invalid_json"
INVALID_MESSAGE = "invalid_message"
UNKNOWN_TYPE = "unknown_type"
INVALID_CHANNEL = "invalid_channel"
TOO_MANY_CHANNELS = "too_many_channels"
BINARY_NOT_SUPPORTED = "binary_not_supported"
MESSAGE_TOO_LARGE = "message_too_large"
RATE_LIMITED = "rate_limited"
TOO_MANY_SUBSCRIPTIONS = "too_many_subscriptions"
FORBIDDEN = "forbidden"
INVALID_POSITION = "invalid_position"
UNKNOWN_POSITION = "unknown_position"
TOO_MANY_POSITIONS = "too_many_positions"
SNAPSHOT_TOO_LARGE = "snapshot_too_large"
REPLAY_RATE_LIMITED = "replay_rate_limited"
# Subscription options (docs/protocol.md, "Subscription options"); the
# filter's own codes (bad_filter, filter_too_large, server_filter_limit)
# are L{odin_ws.shard.delivery.filters}'.
BAD_DELTA = "bad_delta"
BAD_MAX_RATE = "bad_max_rate"
OPTIONS_CONFLICT = "options_conflict"
TOO_MANY_FILTERS = "too_many_filters"
BAD_FILTER = "bad_filter"
FILTER_TOO_LARGE = "filter_too_large"
SERVER_FILTER_LIMIT = "server_filter_limit"

ERROR_CODES = frozenset((
    INVALID_JSON, INVALID_MESSAGE, UNKNOWN_TYPE, INVALID_CHANNEL, TOO_MANY_CHANNELS,
    BINARY_NOT_SUPPORTED, MESSAGE_TOO_LARGE, RATE_LIMITED, TOO_MANY_SUBSCRIPTIONS,
    FORBIDDEN, INVALID_POSITION, UNKNOWN_POSITION, TOO_MANY_POSITIONS, SNAPSHOT_TOO_LARGE,
    REPLAY_RATE_LIMITED, BAD_DELTA, BAD_MAX_RATE, OPTIONS_CONFLICT, TOO_MANY_FILTERS,
    BAD_FILTER, FILTER_TOO_LARGE, SERVER_FILTER_LIMIT))

#: The delta formats a subscribe may ask for (C{"delta": true} is the first).
DELTA_FORMATS = ("merge-patch", "compact")
#: The range of C{max_rate}, events per second per channel.
MIN_RATE = 0.1
MAX_RATE = 100.0
#: The rates a subscription gets: the largest step at most the one asked
#: for. Why steps: subscribers of a channel share a throttle only at equal
#: rates, so arbitrary rates would let clients make the shard's work per
#: event grow with the number of connections.
RATE_STEPS = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0)

MAX_ID_LENGTH = 128
# How much of a client-supplied string an error message quotes back.
_QUOTE_LENGTH = 64

MessageId = str | int | float | None


class ChannelSpec(NamedTuple):
    """One channel (or pattern) a client named, parsed."""

    name: str
    token: str
    event_type: str


#: A subscribe's positions: (topic, partition) -> (epoch, last offset seen).
Since = dict[tuple[str, int], tuple[str, int]]


class ClientError(Exception):
    """A client message the server refuses, with the code and id to echo."""

    def __init__(self, code: str, message: str, id: MessageId = None):
        super().__init__(code, message, id)
        self.code = code
        self.message = message
        self.id = id

    def encode(self) -> bytes:
        """This error as the server's C{error} message."""
        return error(self.code, self.message, self.id)


@dataclass(frozen=True, slots=True)
class Subscribe:
    channels: list[ChannelSpec]
    id: MessageId = None
    #: Recover from these positions (None: no recovery asked).
    since: Since | None = None
    #: Send the latest event of every matching channel first.
    snapshot: bool = False
    #: Deltas of the channels' events where they can, in this format
    #: (one of L{DELTA_FORMATS}; "": none).
    delta: str = ""
    #: At most this many events a second per channel (0: no cap).
    max_rate: float = 0.0
    #: The filter on the events' data, as the client wrote it (None: none);
    #: compiled and interned by the shard (L{odin_ws.shard.delivery.filters}).
    filter: object = None


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    channels: list[ChannelSpec]
    id: MessageId = None


@dataclass(frozen=True, slots=True)
class Ping:
    id: MessageId = None


@dataclass(frozen=True, slots=True)
class Refresh:
    """A new access token for the live connection (when auth is enabled)."""
    token: str
    id: MessageId = None


ClientMessage = Subscribe | Unsubscribe | Ping | Refresh


def _reject_constant(name: str) -> None:
    # NaN and Infinity are not JSON; Python accepts them unless told not to.
    raise ValueError(f"{name} is not valid JSON")


def _quote(text: str) -> str:
    if len(text) > _QUOTE_LENGTH:
        text = text[:_QUOTE_LENGTH] + "..."
    return json.dumps(text)


def _message_id(obj: dict) -> MessageId:
    value = obj.get("id")
    if value is None:
        return None
    kind = type(value)
    if kind is str:
        if len(value) > MAX_ID_LENGTH:
            raise ClientError(INVALID_MESSAGE,
                              f"id must be at most {MAX_ID_LENGTH} characters")
        return value
    if kind is int:
        return value
    if kind is float:
        # 1e999 parses to inf, which has no JSON spelling to echo back.
        if not math.isfinite(value):
            raise ClientError(INVALID_MESSAGE, "id must be a finite number")
        return value
    raise ClientError(INVALID_MESSAGE, "id must be a string or a number")


def _channels(obj: dict, msg_id: MessageId, max_channels: int,
              max_channel_length: int) -> list[ChannelSpec]:
    names = obj.get("channels")
    if type(names) is not list:
        raise ClientError(INVALID_MESSAGE, "channels must be a list of strings", msg_id)
    if not names:
        raise ClientError(INVALID_MESSAGE, "channels must not be empty", msg_id)
    if len(names) > max_channels:
        raise ClientError(TOO_MANY_CHANNELS,
                          f"at most {max_channels} channels per message", msg_id)
    seen: dict[str, ChannelSpec] = {}
    for name in names:
        if type(name) is not str:
            raise ClientError(INVALID_MESSAGE, "channels must be a list of strings",
                              msg_id)
        if name in seen:
            continue
        try:
            token, event_type = parse_pattern(name, max_channel_length)
        except InvalidChannel as e:
            raise ClientError(INVALID_CHANNEL,
                              f"invalid channel {_quote(name)}: {e}", msg_id) from None
        seen[name] = ChannelSpec(name, token, event_type)
    return list(seen.values())


def _since(obj: dict, msg_id: MessageId, max_positions: int) -> Since | None:
    texts = obj.get("since")
    if texts is None:
        return None
    if type(texts) is not list:
        raise ClientError(INVALID_MESSAGE, "since must be a list of positions", msg_id)
    if len(texts) > max_positions:
        raise ClientError(TOO_MANY_POSITIONS,
                          f"at most {max_positions} positions per subscribe", msg_id)
    since: Since = {}
    for text in texts:
        try:
            topic, partition, epoch, offset = positions.decode(text)
        except positions.InvalidPosition as e:
            raise ClientError(INVALID_POSITION, str(e), msg_id) from None
        if (topic, partition) in since:
            raise ClientError(INVALID_POSITION, f"two positions for partition {partition} "
                              f"of {_quote(topic)}", msg_id)
        since[(topic, partition)] = (epoch, offset)
    return since


def _delta(obj: dict, msg_id: MessageId) -> str:
    value = obj.get("delta", False)
    if value is False or value is None:
        return ""
    if value is True:
        return DELTA_FORMATS[0]
    if value in DELTA_FORMATS:
        return value
    if type(value) is str:
        raise ClientError(BAD_DELTA, f"unknown delta format {_quote(value)}; this server "
                          f"knows {', '.join(DELTA_FORMATS)}", msg_id)
    raise ClientError(BAD_DELTA, "delta must be true, false or a delta format", msg_id)


def _max_rate(obj: dict, msg_id: MessageId) -> float:
    value = obj.get("max_rate")
    if value is None:
        return 0.0
    if type(value) not in (int, float) or not (MIN_RATE <= value <= MAX_RATE):
        raise ClientError(BAD_MAX_RATE, f"max_rate must be a number of events per second "
                          f"from {MIN_RATE:g} to {MAX_RATE:g}", msg_id)
    return max(step for step in RATE_STEPS if step <= value)


def parse_client_message(payload: bytes, max_channels: int, max_channel_length: int,
                         max_positions: int = 1000) -> ClientMessage:
    """
    Parse one text message from a client.

    A subscribe or unsubscribe naming any invalid channel is refused whole;
    repeated channels are collapsed, first occurrence kept. Unknown fields
    are ignored, so newer clients can talk to older servers.

    @raise ClientError: the message is refused; its C{id} is the message's
        own id when that much could be read, so the reply can echo it.
    """
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise ClientError(INVALID_JSON, "message is not valid UTF-8") from None
    try:
        obj = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        # ValueError covers syntax errors, NaN/Infinity and integers past
        # Python's digit limit; RecursionError, absurdly deep nesting.
        raise ClientError(INVALID_JSON, "message is not valid JSON") from None
    if type(obj) is not dict:
        raise ClientError(INVALID_MESSAGE, "message must be a JSON object")
    msg_id = _message_id(obj)
    kind = obj.get("type")
    if type(kind) is not str:
        raise ClientError(INVALID_MESSAGE, "type must be a string", msg_id)
    if kind == "subscribe":
        channels = _channels(obj, msg_id, max_channels, max_channel_length)
        snapshot = obj.get("snapshot", False)
        if type(snapshot) is not bool:
            raise ClientError(INVALID_MESSAGE, "snapshot must be true or false", msg_id)
        return Subscribe(channels, msg_id, _since(obj, msg_id, max_positions), snapshot,
                         _delta(obj, msg_id), _max_rate(obj, msg_id), obj.get("filter"))
    if kind == "unsubscribe":
        return Unsubscribe(_channels(obj, msg_id, max_channels, max_channel_length),
                           msg_id)
    if kind == "ping":
        return Ping(msg_id)
    if kind == "refresh":
        token = obj.get("token")
        if type(token) is not str or not token:
            raise ClientError(INVALID_MESSAGE, "token must be a non-empty string", msg_id)
        return Refresh(token, msg_id)
    raise ClientError(UNKNOWN_TYPE, f"unknown message type {_quote(kind)}", msg_id)


# -- encoders (server -> client). ASCII-only output: any string, even one with
# lone surrogates from a client's \ud800 escape, encodes to valid UTF-8.

def _dumps(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":"), allow_nan=False).encode("ascii")


_ACK_HEADS = {kind: b'{"type":"%s","channels":' % kind.encode()
              for kind in ("subscribed", "unsubscribed")}
_PONG = b'{"type":"pong"}'
_ID = b',"id":'


def _tail(id: MessageId) -> bytes:
    return b"}" if id is None else _ID + _dumps(id) + b"}"


def ack(kind: str, channels: list[str], id: MessageId = None) -> bytes:
    """C{{"type":"subscribed"|"unsubscribed","channels":[...],"id":...}}."""
    return _ACK_HEADS[kind] + _dumps(channels) + _tail(id)


def subscribed(channels: list[str], id: MessageId = None, *, recovered: bool | None = None,
               reason: str | None = None, replayed: int | None = None,
               snapshot: int | None = None, positions: list[str] | None = None) -> bytes:
    """
    The ack of a subscribe, with what recovery and snapshot did:
    C{{"type":"subscribed","channels":[...],"recovered":true,"replayed":3,
    "snapshot":2,"positions":[...],"id":...}} (fields only when asked for).
    """
    extra = b""
    if recovered is not None:
        extra += b',"recovered":' + (b"true" if recovered else b"false")
        if reason is not None:
            extra += b',"reason":' + _dumps(reason)
        if replayed is not None:
            extra += b',"replayed":%d' % replayed
    if snapshot is not None:
        extra += b',"snapshot":%d' % snapshot
    if positions is not None:
        extra += b',"positions":' + _dumps(positions)
    return _ACK_HEADS["subscribed"] + _dumps(channels) + extra + _tail(id)


def pong(id: MessageId = None) -> bytes:
    """C{{"type":"pong","id":...}}."""
    if id is None:
        return _PONG
    return b'{"type":"pong"' + _tail(id)


def error(code: str, message: str, id: MessageId = None) -> bytes:
    """C{{"type":"error","code":...,"message":...,"id":...}}."""
    return (b'{"type":"error","code":' + _dumps(code) + b',"message":'
            + _dumps(message) + _tail(id))


# -- subscribe by URL (WebSocket ?channels=, the SSE endpoint; docs/protocol.md)

_TRUE = ("1", "true")
_FALSE = ("", "0", "false")


def parse_since_text(text: str, max_positions: int) -> Since:
    """
    The positions of a URL's C{since} or an SSE C{Last-Event-ID}: a position
    vector (an SSE id) or comma-separated positions.

    @raise ClientError: C{invalid_position} or C{too_many_positions}.
    """
    try:
        if "~" in text:
            return positions.decode_vector(text, max_positions)
        return _since({"since": text.split(",")}, None, max_positions) or {}
    except positions.TooManyPositions:
        raise ClientError(TOO_MANY_POSITIONS,
                          f"at most {max_positions} positions per subscribe") from None
    except positions.InvalidPosition as e:
        raise ClientError(INVALID_POSITION, str(e)) from None


def parse_url_subscribe(query: Mapping[str, str], max_channels: int, max_channel_length: int,
                        max_positions: int, last_event_id: str | None = None
                        ) -> Subscribe | None:
    """
    The subscribe a URL's query asks for (C{channels}, C{snapshot}, C{since};
    C{last_event_id}, when given and not empty, wins over C{since}); None
    when the query names no channels nor asks for recovery or a snapshot.

    @raise ClientError: as a C{subscribe} message with the same content.
    """
    names = query.get("channels")
    snapshot_text = query.get("snapshot")
    since_text = last_event_id or query.get("since")
    if names is None:
        if snapshot_text is None and since_text is None:
            return None
        raise ClientError(INVALID_MESSAGE, "since and snapshot need channels")
    if not names:
        raise ClientError(INVALID_MESSAGE, "channels must not be empty")
    channels = _channels({"channels": names.split(",")}, None, max_channels,
                         max_channel_length)
    snapshot = (snapshot_text or "").lower()
    if snapshot not in _TRUE and snapshot not in _FALSE:
        raise ClientError(INVALID_MESSAGE, "snapshot must be 1, 0, true or false")
    since = parse_since_text(since_text, max_positions) if since_text else None
    return Subscribe(channels, None, since, snapshot in _TRUE, *_url_options(query))


def _url_options(query: Mapping[str, str]) -> tuple[str, float, object]:
    """
    The subscription options of a URL (C{delta}, C{max_rate}, C{filter}):
    C{delta=1|true|compact|merge-patch|0|false}, C{max_rate=<number>},
    C{filter=<the filter's JSON>}; the same codes as in a message. The
    filter's grammar is checked by the caller (it compiles it).
    """
    obj: dict[str, object] = {}
    delta = query.get("delta")
    if delta is not None:
        lowered = delta.lower()
        obj["delta"] = True if lowered in _TRUE else False if lowered in _FALSE else delta
    rate = query.get("max_rate")
    if rate is not None:
        try:
            number = float(rate)
        except ValueError:
            number = math.nan     # refused below, as any value out of range
        obj["max_rate"] = number
    spec = None
    text = query.get("filter")
    if text is not None:
        try:
            spec = json.loads(text, parse_constant=_reject_constant)
        except (ValueError, RecursionError):
            raise ClientError(BAD_FILTER, "filter is not valid JSON") from None
    return _delta(obj, None), _max_rate(obj, None), spec
