"""
Tests for L{odin_ws.shard.clients.messages}.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from odin_ws.shard.clients import messages
from odin_ws.shard.clients.messages import (
    ChannelSpec,
    ClientError,
    Ping,
    Refresh,
    Subscribe,
    Unsubscribe,
    ack,
    error,
    parse_client_message,
    pong,
)

MAX_CHANNELS = 5
MAX_LENGTH = 160


def parse(payload: bytes | str | dict):
    if isinstance(payload, dict):
        payload = json.dumps(payload)
    if isinstance(payload, str):
        payload = payload.encode("utf-8")
    return parse_client_message(payload, MAX_CHANNELS, MAX_LENGTH)


class ParseTests(SynchronousTestCase):
    def test_subscribe(self) -> None:
        """A subscribe message yields (name, token, type) triples and its id."""
        got = parse({"type": "subscribe", "id": "s1",
                     "channels": ["odin.token.ABC.trade", "odin.token.*.price"]})
        self.assertEqual(got, Subscribe([ChannelSpec("odin.token.ABC.trade", "ABC", "trade"),
                                         ChannelSpec("odin.token.*.price", "*", "price")], "s1"))

    def test_unsubscribe(self) -> None:
        """An unsubscribe message parses like a subscribe, into Unsubscribe."""
        got = parse({"type": "unsubscribe", "channels": ["odin.token.ABC.*"]})
        self.assertEqual(got, Unsubscribe([ChannelSpec("odin.token.ABC.*", "ABC", "*")], None))

    def test_duplicatesCollapsed(self) -> None:
        """Repeated channels in one message count once, first occurrence first."""
        got = parse({"type": "subscribe", "channels": [
            "odin.token.B.trade", "odin.token.A.trade", "odin.token.B.trade"]})
        self.assertEqual([c[0] for c in got.channels],
                         ["odin.token.B.trade", "odin.token.A.trade"])

    def test_ping(self) -> None:
        """A ping parses with or without an id."""
        self.assertEqual(parse({"type": "ping"}), Ping(None))
        self.assertEqual(parse({"type": "ping", "id": 42}), Ping(42))

    def test_refresh(self) -> None:
        """A refresh carries the new token."""
        self.assertEqual(parse({"type": "refresh", "token": "eyJ", "id": 1}),
                         Refresh("eyJ", 1))

    def test_idKinds(self) -> None:
        """Ids may be strings up to 128 characters, integers or finite floats."""
        for value in ["", "x" * 128, "日本", 0, -7, 2 ** 70, 1.5]:
            self.assertEqual(parse({"type": "ping", "id": value}).id, value)

    def test_unknownFieldsIgnored(self) -> None:
        """Fields the server does not know are ignored (forward compatibility)."""
        self.assertEqual(parse({"type": "ping", "since": {"a": 1}}), Ping(None))


class ParseErrorTests(SynchronousTestCase):
    def assertError(self, payload, code: str, id=None) -> ClientError:
        with self.assertRaises(ClientError) as ctx:
            parse(payload)
        self.assertEqual((ctx.exception.code, ctx.exception.id), (code, id))
        self.assertIn(code, messages.ERROR_CODES)
        return ctx.exception

    def test_invalidUtf8(self) -> None:
        """Bytes that are not UTF-8, including encoded surrogates, are invalid_json."""
        self.assertError(b'{"type":"ping","id":"\xff"}', messages.INVALID_JSON)
        self.assertError(b'"\xed\xa0\x80"', messages.INVALID_JSON)

    def test_notJson(self) -> None:
        """Text that is not JSON, empty text and a BOM are invalid_json."""
        for text in ["{", "", "ping", "\ufeff{}", "{'type':'ping'}"]:
            self.assertError(text, messages.INVALID_JSON)

    def test_notUtf8Json(self) -> None:
        """UTF-16 JSON is refused although Python's json would sniff it."""
        self.assertError('{"type":"ping"}'.encode("utf-16"), messages.INVALID_JSON)

    def test_nanInfinity(self) -> None:
        """NaN and Infinity literals are not JSON: invalid_json."""
        for text in ['{"type":"ping","id":NaN}', '{"type":"ping","x":Infinity}',
                     '[-Infinity]']:
            self.assertError(text, messages.INVALID_JSON)

    def test_deepNesting(self) -> None:
        """100,000 levels of nesting end as invalid_json, not a RecursionError."""
        self.assertError("[" * 100000 + "]" * 100000, messages.INVALID_JSON)
        self.assertError('{"a":' * 100000, messages.INVALID_JSON)

    def test_hugeNumbers(self) -> None:
        """
        An integer past Python's digit limit is invalid_json; a float that
        overflows to infinity cannot be echoed, so as an id it is invalid_message.
        """
        self.assertError('{"type":"ping","id":' + "9" * 5000 + "}", messages.INVALID_JSON)
        self.assertError('{"type":"ping","id":1e999}', messages.INVALID_MESSAGE)
        self.assertEqual(parse('{"type":"ping","x":1e999}'), Ping(None))

    def test_notAnObject(self) -> None:
        """JSON that is not an object is invalid_message."""
        for text in ["[]", "1", '"ping"', "null"]:
            self.assertError(text, messages.INVALID_MESSAGE)

    def test_badId(self) -> None:
        """Ids of other types, or too long, are invalid_message and not echoed."""
        for value in [True, [1], {"a": 1}, "x" * 129]:
            self.assertError({"type": "ping", "id": value}, messages.INVALID_MESSAGE)

    def test_badType(self) -> None:
        """A missing or non-string type is invalid_message, with the id echoed."""
        self.assertError({"id": 3}, messages.INVALID_MESSAGE, 3)
        self.assertError({"type": 1, "id": "a"}, messages.INVALID_MESSAGE, "a")

    def test_unknownType(self) -> None:
        """A string type the server does not know is unknown_type, naming it."""
        err = self.assertError({"type": "publish", "id": 9}, messages.UNKNOWN_TYPE, 9)
        self.assertIn("publish", err.message)

    def test_channelsNotAList(self) -> None:
        """channels missing, not a list, or holding non-strings is invalid_message."""
        for channels in [None, "odin.token.A.trade", {"a": 1}, ["odin.token.A.trade", 1]]:
            body: dict[str, Any] = {"type": "subscribe", "id": "c"}
            if channels is not None:
                body["channels"] = channels
            self.assertError(body, messages.INVALID_MESSAGE, "c")

    def test_channelsEmpty(self) -> None:
        """An empty channel list is invalid_message."""
        self.assertError({"type": "unsubscribe", "channels": [], "id": 1},
                         messages.INVALID_MESSAGE, 1)

    def test_tooManyChannels(self) -> None:
        """More channel entries than the limit is too_many_channels."""
        names = [f"odin.token.T{i}.trade" for i in range(MAX_CHANNELS + 1)]
        self.assertError({"type": "subscribe", "channels": names, "id": 2},
                         messages.TOO_MANY_CHANNELS, 2)
        names.pop()
        self.assertEqual(len(parse({"type": "subscribe", "channels": names}).channels),
                         MAX_CHANNELS)

    def test_invalidChannelRejectsWhole(self) -> None:
        """
        One invalid channel refuses the whole message with invalid_channel,
        and the message names the channel, truncated.
        """
        bad = "odin.token.A.b.c" + "x" * 100
        err = self.assertError(
            {"type": "subscribe", "channels": ["odin.token.A.trade", bad], "id": "z"},
            messages.INVALID_CHANNEL, "z")
        self.assertIn(bad[:64], err.message)
        self.assertNotIn(bad, err.message)

    def test_invalidChannelShapes(self) -> None:
        """Wrong prefix, segment count, characters, partial wildcards, length."""
        for name in ["odin.token.A", "foo.token.A.trade", "odin.token.A.tr ade",
                     "odin.token.A*.trade", "odin.token..trade",
                     "odin.token.A." + "t" * 150, "odin.token.\ud800.trade"]:
            self.assertError({"type": "subscribe", "channels": [name]},
                             messages.INVALID_CHANNEL)

    def test_refreshWithoutToken(self) -> None:
        """A refresh without a non-empty string token is invalid_message."""
        bodies: list[dict[str, Any]] = [{"type": "refresh"}, {"type": "refresh", "token": ""},
                                        {"type": "refresh", "token": 5}]
        for body in bodies:
            self.assertError({**body, "id": 4}, messages.INVALID_MESSAGE, 4)


class EncodeTests(SynchronousTestCase):
    def test_ack(self) -> None:
        """Acks are compact JSON naming the channels, with the id when given."""
        self.assertEqual(ack("subscribed", ["odin.token.A.trade"], "s1"),
                         b'{"type":"subscribed","channels":["odin.token.A.trade"],"id":"s1"}')
        self.assertEqual(ack("unsubscribed", ["odin.token.*.*"]),
                         b'{"type":"unsubscribed","channels":["odin.token.*.*"]}')

    def test_pong(self) -> None:
        """pong omits a None id and echoes any other."""
        self.assertEqual(pong(), b'{"type":"pong"}')
        self.assertEqual(pong(1.5), b'{"type":"pong","id":1.5}')
        self.assertEqual(json.loads(pong(2 ** 70)), {"type": "pong", "id": 2 ** 70})

    def test_error(self) -> None:
        """error() carries code, message and id."""
        self.assertEqual(json.loads(error(messages.FORBIDDEN, "no", 7)),
                         {"type": "error", "code": "forbidden", "message": "no", "id": 7})
        self.assertNotIn(b'"id"', error(messages.RATE_LIMITED, "slow down"))

    def test_clientErrorEncode(self) -> None:
        """A ClientError encodes to the error message echoing its id."""
        with self.assertRaises(ClientError) as ctx:
            parse({"type": "nope", "id": "日本"})
        self.assertEqual(json.loads(ctx.exception.encode().decode("utf-8")),
                         {"type": "error", "code": "unknown_type",
                          "message": 'unknown message type "nope"', "id": "日本"})

    def test_loneSurrogatesEncode(self) -> None:
        """
        An id or channel with a lone surrogate (from a \\ud800 escape) still
        encodes to valid UTF-8, so the reply never breaks the text frame.
        """
        with self.assertRaises(ClientError) as ctx:
            parse(b'{"type":"subscribe","channels":["odin.token.\\ud800.x"],"id":"\\udc00"}')
        self.assertEqual(ctx.exception.id, "\udc00")
        ctx.exception.encode().decode("utf-8")
        self.assertEqual(pong("\ud800").decode("utf-8"), '{"type":"pong","id":"\\ud800"}')


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.text(max_size=8), inner, max_size=4),
    max_leaves=12)
channel_like = st.one_of(
    st.text(max_size=40),
    st.builds(lambda a, b: f"odin.token.{a}.{b}",
              st.sampled_from(["A", "*", "", "a.b", "T-1:x"]),
              st.sampled_from(["trade", "*", "", "p q", "x" * 200])))
messages_like = st.fixed_dictionaries(
    {"type": st.sampled_from(["subscribe", "unsubscribe", "ping", "refresh", "x", 1])},
    optional={"channels": st.lists(channel_like, max_size=7) | json_values,
              "id": json_values, "token": json_values})


def _checkOutcome(testcase: SynchronousTestCase, payload: bytes) -> None:
    try:
        got = parse_client_message(payload, MAX_CHANNELS, MAX_LENGTH)
    except ClientError as e:
        testcase.assertIn(e.code, messages.ERROR_CODES)
        e.encode().decode("utf-8")
    else:
        testcase.assertIsInstance(got, (Subscribe, Unsubscribe, Ping, Refresh))


class FuzzTests(SynchronousTestCase):
    @settings(max_examples=300, deadline=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(st.binary(max_size=200))
    def test_anyBytes(self, payload: bytes) -> None:
        """Any bytes parse to a message or a ClientError, never anything else."""
        _checkOutcome(self, payload)

    @settings(max_examples=300, deadline=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(messages_like)
    def test_messageShaped(self, body: dict) -> None:
        """
        Message-shaped JSON with arbitrary fields parses to a message or a
        ClientError whose reply is valid UTF-8.
        """
        _checkOutcome(self, json.dumps(body).encode("utf-8"))

    @settings(max_examples=100, deadline=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(st.lists(st.sampled_from(["odin.token.A.trade", "odin.token.*.*",
                                     "odin.token.B.*"]), min_size=1, max_size=5),
           json_values.filter(lambda v: v is None or type(v) in (int, str)
                              and (type(v) is int or len(v) <= 128)))
    def test_validSubscribeRoundTrip(self, names: list[str], msg_id) -> None:
        """Valid subscribes keep their distinct channels in order and their id."""
        body = {"type": "subscribe", "channels": names}
        if msg_id is not None:
            body["id"] = msg_id
        got = parse(body)
        self.assertEqual([c[0] for c in got.channels], list(dict.fromkeys(names)))
        self.assertEqual(got.id, msg_id)


class SubscribeOptionTests(SynchronousTestCase):
    def test_delta_formats(self) -> None:
        """
        delta: true and delta: "merge-patch" both ask for merge-patch
        deltas, "compact" for compact ones; false (or none) for none.
        """
        base = {"type": "subscribe", "channels": ["odin.token.A.price"]}
        self.assertEqual(parse({**base, "delta": True}).delta, "merge-patch")
        self.assertEqual(parse({**base, "delta": "merge-patch"}).delta, "merge-patch")
        self.assertEqual(parse({**base, "delta": "compact"}).delta, "compact")
        self.assertEqual(parse({**base, "delta": False}).delta, "")
        self.assertEqual(parse(base).delta, "")

    def test_unknown_delta_refused(self) -> None:
        """An unknown delta format, or a delta that is no format, is refused with bad_delta."""
        values: list[object] = ["fossil", 1, [], {"format": "merge-patch"}]
        for value in values:
            e = self.assertRaises(ClientError, parse, {
                "type": "subscribe", "channels": ["odin.token.A.price"], "delta": value, "id": 3})
            self.assertEqual((e.code, e.id), (messages.BAD_DELTA, 3))

    def test_max_rate_range(self) -> None:
        """max_rate takes 0.1 to 100 events a second, rounded down to a step; else bad_max_rate."""
        base = {"type": "subscribe", "channels": ["odin.token.A.price"]}
        self.assertEqual(parse({**base, "max_rate": 2}).max_rate, 2.0)
        self.assertEqual(parse({**base, "max_rate": 0.1}).max_rate, 0.1)
        self.assertEqual(parse({**base, "max_rate": 100}).max_rate, 100.0)
        self.assertEqual(parse(base).max_rate, 0.0)
        # Rounded down to a step, so that subscribers share throttles.
        self.assertEqual(parse({**base, "max_rate": 3}).max_rate, 2.0)
        self.assertEqual(parse({**base, "max_rate": 0.15}).max_rate, 0.1)
        self.assertEqual(parse({**base, "max_rate": 99.9}).max_rate, 50.0)
        for value in (0, 0.05, 101, -1, True, "2", [2]):
            e = self.assertRaises(ClientError, parse, {**base, "max_rate": value})
            self.assertEqual(e.code, messages.BAD_MAX_RATE)

    def test_filter_kept_as_written(self) -> None:
        """A filter is kept as the client wrote it (the shard compiles it)."""
        got = parse({"type": "subscribe", "channels": ["odin.token.A.trade"],
                     "filter": {"size": {"gte": 100}}})
        self.assertEqual(got.filter, {"size": {"gte": 100}})


class UrlOptionTests(SynchronousTestCase):
    def url(self, **query: str) -> messages.Subscribe | None:
        return messages.parse_url_subscribe({"channels": "odin.token.A.price", **query},
                                            100, 160, 100)

    def test_options_from_the_query(self) -> None:
        """delta, max_rate and filter of a URL give the subscribe those options."""
        got = self.url(delta="compact", max_rate="3", filter='{"size":{"gte":100}}')
        assert got is not None
        self.assertEqual((got.delta, got.max_rate, got.filter),
                         ("compact", 2.0, {"size": {"gte": 100}}))
        for text, fmt in (("1", "merge-patch"), ("true", "merge-patch"), ("merge-patch",
                          "merge-patch"), ("0", ""), ("false", "")):
            self.assertEqual(self.url(delta=text).delta, fmt, text)
        plain = self.url()
        assert plain is not None
        self.assertEqual((plain.delta, plain.max_rate, plain.filter), ("", 0.0, None))

    def test_bad_options_refused_with_their_codes(self) -> None:
        """Bad values get the codes a subscribe message would get; a filter that is not JSON is bad_filter."""
        for query, code in (({"delta": "fossil"}, messages.BAD_DELTA),
                            ({"max_rate": "fast"}, messages.BAD_MAX_RATE),
                            ({"max_rate": "nan"}, messages.BAD_MAX_RATE),
                            ({"max_rate": "1e9"}, messages.BAD_MAX_RATE),
                            ({"filter": "{not json"}, messages.BAD_FILTER),
                            ({"filter": "NaN"}, messages.BAD_FILTER)):
            e = self.assertRaises(messages.ClientError, self.url, **query)
            self.assertEqual(e.code, code, query)
