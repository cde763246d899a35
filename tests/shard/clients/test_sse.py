"""
Server-Sent Events at a shard (L{odin_ws.shard.clients.sse}) and subscribe by URL
over WebSocket, driven by fakes: what a stream answers, sends, refuses and
recovers, and that the WebSocket write path is untouched by it.
"""

from __future__ import annotations

import json
import time

import jwt
from twisted.internet.address import IPv4Address

from odin_ws.common.events import Event
from odin_ws.shard.clients import messages, sse
from odin_ws.shard.delivery import ssefeed
from odin_ws.shard.delivery.ssefeed import Tops, vector_text
from odin_ws.shard.history import positions
from odin_ws.shard.history.holes import UNDECODABLE, Hole
from tests.helpers import ShardTestCase, StalledSocket, StreamClient, sample
from tests.helpers.cases import ShardClient, _ports

TOPIC = "odin.trades"
PRICES = "odin.prices"
SECRET = "s" * 32


class StreamTestCase(ShardTestCase):
    settings = {"kafka__topics": {TOPIC: "trade", PRICES: "price"},
                "limits__max_positions": 10}

    def setUp(self):
        super().setUp()
        self.offset = {(TOPIC, 0): 99, (TOPIC, 1): 499, (PRICES, 0): 9}

    def event(self, token: str, event_type: str = "trade", partition: int = 0,
              topic: str = TOPIC, epoch: str = "ep1") -> Event:
        key = (topic, partition)
        self.offset[key] += 1
        # Stamped now: history keeps events by age (history.max_age).
        return Event.build(token, event_type, b'{"o":%d}' % self.offset[key],
                           int(time.time() * 1000), topic, partition, self.offset[key], epoch)

    def deliver(self, *events: Event) -> list[Event]:
        self.shard.delivery.deliver(list(events))
        return list(events)

    def stream(self, query: dict | None = None, headers: tuple[str, ...] = (),
               ip: str = "10.0.0.1", expect: int = 200, transport=None) -> StreamClient:
        client = StreamClient(self.shard, ip, transport)
        self.assertEqual(client.request(query, headers), expect, client.body)
        return client


class StreamTests(StreamTestCase):
    def test_stream_answers_then_events_with_vector_ids(self):
        """
        GET /sse?channels=... is a text/event-stream: the subscribed ack
        first (a named event), then each matching event as an unnamed
        message whose data is the WebSocket event JSON and whose id is the
        shard's position vector after it (every partition delivered,
        matching or not); other channels' events are not sent.
        """
        c = self.stream({"channels": "odin.token.A.trade"})
        self.assertEqual(c.headers["content-type"], "text/event-stream; charset=utf-8")
        self.assertEqual(c.headers["cache-control"], "no-cache")
        [ack] = c.messages()
        self.assertEqual((ack.event, ack.json()),
                         ("subscribed", {"type": "subscribed", "channels": ["odin.token.A.trade"]}))
        a1, b1, p1, a2 = self.deliver(self.event("A"), self.event("B", partition=1),
                                      self.event("X", "price", topic=PRICES), self.event("A"))
        got = c.messages()
        self.assertEqual([m.data.encode() for m in got], [a1.envelope, a2.envelope])
        self.assertEqual(got[0].id, f"{TOPIC}~ep1~0:100")
        self.assertEqual(got[1].id, f"{PRICES}~ep1~0:10;{TOPIC}~ep1~0:101,1:500")
        self.assertEqual(json.loads(got[1].data)["pos"], f"{TOPIC}:0:ep1:101")

    def test_ack_carries_the_vector_once_events_were_delivered(self):
        """With history, the subscribed ack carries the shard's vector as its id."""
        self.deliver(self.event("A"), self.event("B", partition=1))
        c = self.stream({"channels": "odin.token.Z.trade"})
        [ack] = c.messages()
        self.assertEqual(ack.id, f"{TOPIC}~ep1~0:100,1:500")

    def test_event_data_with_line_breaks(self):
        """An upstream value with line breaks goes out as several data lines, read back whole."""
        c = self.stream({"channels": "odin.token.A.trade"})
        c.messages()
        e = Event.build("A", "trade", b'{\n  "p": 1\r\n}', int(time.time() * 1000), TOPIC, 0,
                        5, "ep1")
        self.deliver(e)
        [m] = c.messages()
        self.assertEqual(m.json()["data"], {"p": 1})

    def test_keepalive_comments(self):
        """A ': ping' comment goes out every keepalive.ping_interval seconds."""
        c = self.stream({"channels": "odin.token.A.trade"})
        c.messages(comments=True)
        self.advance(self.config["keepalive.ping_interval"])
        self.assertEqual([m.comment for m in c.messages(comments=True)], ["ping"])
        self.advance(self.config["keepalive.ping_interval"])
        self.assertEqual([m.comment for m in c.messages(comments=True)], ["ping"])

    def test_keepalive_comments_each_on_its_own_time(self):
        """
        Each stream's comments come every interval from its own open, not all
        streams' in one turn (a shard with many streams would write them all
        at once).
        """
        interval = self.config["keepalive.ping_interval"]
        first = self.stream({"channels": "odin.token.A.trade"})
        self.advance(5)
        second = self.stream({"channels": "odin.token.A.trade"})
        first.messages(comments=True), second.messages(comments=True)
        self.advance(interval - 5)
        self.assertEqual([m.comment for m in first.messages(comments=True)], ["ping"])
        self.assertEqual(second.messages(comments=True), [])
        self.advance(5)
        self.assertEqual([m.comment for m in second.messages(comments=True)], ["ping"])
        self.assertEqual(first.messages(comments=True), [])

    def test_drain_sends_close_4000_with_a_retry(self):
        """The shard's drain ends a stream with a close event (4000) and a jittered retry."""
        c = self.stream({"channels": "odin.token.A.trade"})
        c.messages()
        d = self.shard.drain(0)
        self.advance(0)
        [close] = c.messages()
        self.assertEqual(close.event, "close")
        self.assertEqual(close.json()["code"], 4000)
        self.assertTrue(500 <= close.retry <= 5000)
        self.assertTrue(c.lost)
        self.assertEqual(self.successResultOf(d), 1)
        self.assertIsNone(self.shard.streams.feed())

    def test_closing_forgets_subscriptions(self):
        """A stream gone leaves no subscription; with none open, delivery skips SSE."""
        c = self.stream({"channels": "odin.token.A.trade,odin.token.*.*"})
        self.assertEqual(self.shard.streams.index.total, 2)
        self.assertIsNotNone(self.shard.streams.feed())
        c.drop()
        self.assertEqual(self.shard.streams.index.total, 0)
        self.assertIsNone(self.shard.streams.feed())
        self.assertNotIn(c.proto, self.shard.connections)
        self.assertEqual(self.shard.connections.per_ip, {})

    def test_upload_ends_the_stream(self):
        """
        A client that sends bytes on its open stream (an upload the stream
        would read and discard forever, issue 23 L2) gets a close event
        1008 and the connection closes: it is read no more.
        """
        c = self.stream({"channels": "odin.token.A.trade"})
        c.messages()
        before = sample("odinws_connections_closed_total", reason="clean", code="1008")
        c.proto.dataReceived(b"x" * 65536)
        c.settle()
        [close] = c.messages()
        self.assertEqual((close.event, close.json()["code"]), ("close", 1008))
        self.assertTrue(c.lost)
        self.assertEqual(sample("odinws_connections_closed_total", reason="clean", code="1008"),
                         before + 1)
        self.assertEqual(self.shard.streams.index.total, 0)

    def test_counted_as_a_shard_client(self):
        """A stream is one of the shard's clients (capacity, drain, per-IP)."""
        c = self.stream({"channels": "odin.token.A.trade"})
        self.assertIn(c.proto, self.shard.connections)
        self.assertIsInstance(c.proto, sse.SseStream)
        self.assertEqual(self.shard.connections.per_ip, {"10.0.0.1": 1})


class FrameOnceTests(StreamTestCase):
    def recipients(self) -> list:
        """What the fan-out is asked to deliver each event to, as the shard passes it."""
        seen: list = []
        publish_run = self.shard.fanout.publish_run

        def recording(items, to, events=None):
            seen.append(to)
            return publish_run(items, to, events)
        self.patch(self.shard.fanout, "publish_run", recording)
        return seen

    def test_one_encoding_per_event_for_every_stream(self):
        """
        Three streams and a WebSocket client on the same channel: each event's
        SSE message is built once (not once per stream) and every stream
        gets the same bytes; the WebSocket client gets its frame as before.
        """
        calls = []
        real = ssefeed.message
        self.patch(ssefeed, "message", lambda *a, **kw: calls.append(a) or real(*a, **kw))
        streams = [self.stream({"channels": "odin.token.A.trade"}, ip=f"10.0.0.{i}")
                   for i in range(1, 4)]
        ws = self.connect("10.0.1.1")
        self.subscribe(ws, "odin.token.A.trade")
        for s in streams:
            s.messages()
        calls.clear()
        events = self.deliver(self.event("A"), self.event("A"))
        self.assertEqual(len(calls), 2)
        got = [[m.data.encode() for m in s.messages()] for s in streams]
        self.assertEqual(got, [[e.envelope for e in events]] * 3)
        self.assertEqual([json.dumps(m, separators=(",", ":")).encode() for m in ws.messages()],
                         [e.envelope for e in events])

    def test_websocket_path_untouched_without_streams(self):
        """
        With no stream open, delivery never asks the SSE side (its offer
        would raise here) and hands the WebSocket fan-out the index's own
        subscriber view: no copy, no per-connection transport test.
        """
        self.patch(ssefeed.Streams, "offer", lambda *a: self.fail("offer called"))
        ws = self.connect()
        self.subscribe(ws, "odin.token.A.trade")
        seen = self.recipients()
        self.deliver(self.event("A"))
        self.assertEqual(len(ws.messages()), 1)
        [to] = seen
        self.assertIs(to, self.shard.subscriptions.match("A", "trade"))

    def test_websocket_subscribers_unchanged_with_streams(self):
        """With streams open, the WebSocket fan-out still gets the index's view as is."""
        self.stream({"channels": "odin.token.A.trade"})
        ws = self.connect("10.0.1.1")
        self.subscribe(ws, "odin.token.A.trade")
        seen = self.recipients()
        self.deliver(self.event("A"))
        self.assertIs(seen[0], self.shard.subscriptions.match("A", "trade"))
        self.assertIs(seen[1], self.shard.streams.index.match("A", "trade"))


class RecoveryTests(StreamTestCase):
    def test_last_event_id_recovers_exactly_what_was_missed(self):
        """
        A stream sees some events and goes; more are delivered (on two
        partitions, some not matching); a new stream with Last-Event-ID set
        to the last id the first one saw gets recovered: true, then exactly
        the missed matching events once, in delivery order per partition,
        then live events; the last replayed event carries the shard's vector.
        """
        first = self.stream({"channels": "odin.token.A.*"})
        seen = self.deliver(self.event("A"), self.event("A", partition=1), self.event("B"))
        msgs = first.messages()[1:]
        self.assertEqual([m.data.encode() for m in msgs], [e.envelope for e in seen[:2]])
        last_id = first.parser.last_id
        first.drop()
        missed = self.deliver(self.event("A"), self.event("B", partition=1),
                              self.event("A", "price", partition=1), self.event("A"))
        second = self.stream({"channels": "odin.token.A.*"}, (f"Last-Event-ID: {last_id}",))
        ack, *replayed = second.messages()
        self.assertEqual(ack.event, "subscribed")
        self.assertEqual((ack.json()["recovered"], ack.json()["replayed"]), (True, 3))
        self.assertIsNone(ack.id)
        self.assertEqual([m.data.encode() for m in replayed],
                         [missed[0].envelope, missed[3].envelope, missed[2].envelope])
        self.assertEqual(replayed[-1].id, f"{TOPIC}~ep1~0:103,1:502")
        live = self.deliver(self.event("A"))
        [m] = second.messages()
        self.assertEqual(m.data.encode(), live[0].envelope)

    def test_cut_mid_replay_resumes_from_the_replayed_id(self):
        """
        A replayed event's id is the client's vector advanced to it, so a
        stream cut after it recovers the rest of the replay, no duplicate.
        """
        first = self.stream({"channels": "odin.token.A.trade"})
        self.deliver(self.event("A"))
        start = first.messages()[-1].id
        first.drop()
        missed = self.deliver(*[self.event("A", partition=p % 2) for p in range(4)])
        second = self.stream({"channels": "odin.token.A.trade"}, (f"Last-Event-ID: {start}",))
        replayed = second.messages()[1:]
        cut = replayed[0].id
        second.drop()
        third = self.stream({"channels": "odin.token.A.trade"}, (f"Last-Event-ID: {cut}",))
        rest = third.messages()[1:]
        got = [replayed[0].data] + [m.data for m in rest]
        self.assertEqual(sorted(got), sorted(e.envelope.decode() for e in missed))
        self.assertEqual(len(got), len(set(got)))

    def test_since_in_the_url_and_last_event_id_wins(self):
        """?since= recovers on a first connection; Last-Event-ID, when sent, wins over it."""
        a = self.deliver(self.event("A"), self.event("A"), self.event("A"))
        c = self.stream({"channels": "odin.token.A.trade", "since": f"{TOPIC}:0:ep1:100"})
        self.assertEqual([m.data.encode() for m in c.messages()[1:]], [e.envelope for e in a[1:]])
        c = self.stream({"channels": "odin.token.A.trade", "since": f"{TOPIC}:0:ep1:100"},
                        (f"Last-Event-ID: {TOPIC}~ep1~0:101",), ip="10.0.0.2")
        self.assertEqual([m.data.encode() for m in c.messages()[1:]], [a[2].envelope])

    def test_not_recovered_then_snapshot(self):
        """
        A gap that cannot be replayed answers recovered: false with its reason
        in the subscribed event; with snapshot=1 the snapshot follows, its
        last event carrying the shard's vector.
        """
        self.deliver(self.event("A"), self.event("B"))
        c = self.stream({"channels": "odin.token.*.trade", "snapshot": "1"},
                        (f"Last-Event-ID: {TOPIC}~other~0:100",))
        ack, *snap = c.messages()
        self.assertEqual((ack.json()["recovered"], ack.json()["reason"], ack.json()["snapshot"]),
                         (False, "other_epoch", 2))
        self.assertEqual([m.json()["snapshot"] for m in snap], [True, True])
        self.assertEqual([m.id for m in snap], [None, f"{TOPIC}~ep1~0:101"])


class RefusalTests(StreamTestCase):
    def refused(self, query, status, code, headers=(), ip="10.0.0.1"):
        before = sample("odinws_rejected_connections_total", status=str(status), reason=code)
        c = self.stream(query, headers, ip=ip, expect=status)
        self.assertEqual(c.error()["code"], code)
        self.assertIsInstance(c.error()["message"], str)
        self.assertEqual(c.headers["content-type"], "application/json")
        self.assertTrue(c.lost)
        self.assertEqual(self.shard.streams.index.total, 0)
        return c, before

    def test_bad_input_answers_400_json_before_the_stream(self):
        """
        A bad channel list, too many channels, no channels, a bad snapshot
        value, a malformed Last-Event-ID or since, or positions of an
        unknown topic: 400 with a JSON body, counted, nothing subscribed.
        """
        many = ",".join(f"odin.token.T{i}.trade" for i in range(101))
        for query, headers, code in [
                ({"channels": "odin.token.A.b.c"}, (), messages.INVALID_CHANNEL),
                ({"channels": many}, (), messages.TOO_MANY_CHANNELS),
                (None, (), messages.INVALID_MESSAGE),
                ({"channels": ""}, (), messages.INVALID_MESSAGE),
                ({"channels": "odin.token.A.trade", "snapshot": "yes"}, (),
                 messages.INVALID_MESSAGE),
                ({"channels": "odin.token.A.trade"}, ("Last-Event-ID: garbage~~",),
                 messages.INVALID_POSITION),
                ({"channels": "odin.token.A.trade", "since": "x:1"}, (),
                 messages.INVALID_POSITION),
                ({"channels": "odin.token.A.trade"},
                 ("Last-Event-ID: t~0~" + ",".join(f"{p}:1" for p in range(11)),),
                 messages.TOO_MANY_POSITIONS),
                ({"channels": "odin.token.A.trade"}, ("Last-Event-ID: other.topic~0~0:5",),
                 messages.UNKNOWN_POSITION)]:
            errors = sample("odinws_client_errors_total", code=code)
            _, before = self.refused(query, 400, code, headers)
            self.assertEqual(sample("odinws_rejected_connections_total", status="400",
                                    reason=code), before + 1, code)
            self.assertEqual(sample("odinws_client_errors_total", code=code), errors + 1)
        self.assertEqual(self.shard.connections.per_ip, {})

    def test_snapshot_too_large(self):
        """A snapshot past limits.max_snapshot_events is refused before the stream."""
        self.reload_shard(limits__max_snapshot_events=1)
        self.deliver(self.event("A"), self.event("B"))
        self.refused({"channels": "odin.token.*.trade", "snapshot": "1"}, 400,
                     messages.SNAPSHOT_TOO_LARGE)

    def test_other_methods_405(self):
        """A POST on the SSE path (with TLS the parent reads nothing) is refused 405."""
        c = StreamClient(self.shard)
        self.assertEqual(c.request({"channels": "odin.token.A.trade"}, method="POST"), 405)
        self.assertEqual(c.error()["code"], "method_not_allowed")

    def test_per_ip_limit_429(self):
        """Past limits.max_connections_per_ip on the shard: 429 too_many_connections."""
        self.reload_shard(limits__max_connections_per_ip=1)
        self.stream({"channels": "odin.token.A.trade"})
        c = self.stream({"channels": "odin.token.A.trade"}, expect=429)
        self.assertEqual(c.error()["code"], "too_many_connections")

    def test_one_subscription_budget_for_both_transports(self):
        """
        limits.max_shard_subscriptions counts WebSocket and stream
        subscriptions together (issue 23, M4), from either side: with 3 held
        by a stream, a WebSocket subscribe of 3 more is refused
        (server_subscription_limit) and one of 2 fits; a stream of 1 more
        then gets 503; closing the stream gives its 3 back to WebSockets.
        """
        # No per-address share: the shard's budget is what is tested here.
        self.reload_shard(limits__max_shard_subscriptions=5, limits__ip_subscription_share=1)
        stream = self.stream({"channels": "odin.token.A.trade,odin.token.B.trade,odin.token.C.*"})
        ws = self.connect("10.0.0.2")
        reply = self.subscribe(ws, "odin.token.D.trade", "odin.token.E.trade", "odin.token.F.*")
        self.assertEqual((reply["type"], reply.get("code")), ("error", "server_subscription_limit"))
        reply = self.subscribe(ws, "odin.token.D.trade", "odin.token.E.trade")
        self.assertEqual(reply["type"], "subscribed")
        refused = self.stream({"channels": "odin.token.G.trade"}, ip="10.0.0.3", expect=503)
        self.assertEqual(refused.error()["code"], "server_subscription_limit")
        stream.drop()
        reply = self.subscribe(ws, "odin.token.H.trade", "odin.token.I.trade", "odin.token.J.*")
        self.assertEqual(reply["type"], "subscribed")

    def test_draining_503_with_retry_after(self):
        """A draining shard answers 503 unavailable with Retry-After."""
        self.shard.drain(0)
        c = self.stream({"channels": "odin.token.A.trade"}, expect=503)
        self.assertEqual(c.error()["code"], "unavailable")
        self.assertEqual(c.headers["retry-after"], str(self.config["listen.retry_after"]))


class OriginTests(StreamTestCase):
    settings = {**StreamTestCase.settings,
                "limits__allowed_origins": ["https://app.example"]}

    def test_origin_checked_and_echoed(self):
        """An allowed Origin is echoed for CORS; a missing or other one gets 403."""
        c = self.stream({"channels": "odin.token.A.trade"}, ("Origin: https://app.example",))
        self.assertEqual(c.headers["access-control-allow-origin"], "https://app.example")
        for headers in [(), ("Origin: https://evil.example",)]:
            c = self.stream({"channels": "odin.token.A.trade"}, headers, expect=403)
            self.assertEqual(c.error()["code"], "origin_not_allowed")


class AuthTests(StreamTestCase):
    settings = {**StreamTestCase.settings, "auth.mode": "jwt", "auth.secret": SECRET,
                "auth.token_sources": ["subprotocol", "header", "query"]}

    def token(self, channels=("odin.token.*.*",), ttl: float = 300) -> str:
        return jwt.encode({"exp": time.time() + ttl, "channels": list(channels)}, SECRET,
                          algorithm="HS256")

    def test_bearer_header_or_query_token(self):
        """A valid token in Authorization: Bearer or ?token= opens the stream."""
        self.stream({"channels": "odin.token.A.trade"},
                    (f"Authorization: Bearer {self.token()}",))
        self.stream({"channels": "odin.token.A.trade", "token": self.token()}, ip="10.0.0.2")

    def test_no_or_bad_token_401_before_the_stream(self):
        """No token, or an expired one: 401 unauthorized with a JSON body, counted."""
        before = sample("odinws_rejected_connections_total", status="401", reason="auth_missing")
        c = self.stream({"channels": "odin.token.A.trade"}, expect=401)
        self.assertEqual(c.error()["code"], "unauthorized")
        self.assertEqual(sample("odinws_rejected_connections_total", status="401",
                                reason="auth_missing"), before + 1)
        c = self.stream({"channels": "odin.token.A.trade", "token": self.token(ttl=-100)},
                        expect=401)
        self.assertEqual(c.error()["code"], "unauthorized")

    def test_channel_outside_the_grant_403(self):
        """A channel the token does not allow: 403 forbidden."""
        c = self.stream({"channels": "odin.token.B.trade",
                         "token": self.token(("odin.token.A.*",))}, expect=403)
        self.assertEqual(c.error()["code"], messages.FORBIDDEN)

    def test_expiry_closes_4001(self):
        """When the token expires the stream ends with a close event 4001."""
        c = self.stream({"channels": "odin.token.A.trade", "token": self.token(ttl=5)})
        c.messages()
        self.advance(5 + self.shard.verifier.leeway + 1)
        [close] = c.messages()
        self.assertEqual((close.event, close.json()["code"]), ("close", 4001))
        self.assertTrue(c.lost)


class SlowStreamTests(StreamTestCase):
    settings = {**StreamTestCase.settings,
                "outbound.policy": {"default": "disconnect"},
                "outbound.max_buffer_bytes": 4096, "kafka.max_record_bytes": 4096,
                "keepalive.ping_interval": 0}

    def test_disconnect_policy_closes_a_stalled_stream_4008(self):
        """
        Under the disconnect policy a stream that stops reading is closed
        after outbound.disconnect_grace, with a close event 4008, counted
        as for WebSocket; a reading stream keeps every event.
        """
        grace = self.config["outbound.disconnect_grace"]
        stalled = self.stream({"channels": "odin.token.T1.trade"},
                              transport=StalledSocket(IPv4Address("TCP", "10.0.0.1", next(_ports))))
        reader = self.stream({"channels": "odin.token.T1.trade"}, ip="10.0.0.2")
        reader.messages()
        before = sample("odinws_connections_closed_total", reason="slow_consumer", code="4008")
        sent = [self.deliver(self.event("T1"))[0] for _ in range(200)]
        self.advance(grace + 1)
        self.assertTrue(stalled.transport.disconnecting)
        stalled.transport.drain()
        stalled.proto.connectionLost(None)
        msgs = stalled.messages()
        self.assertEqual((msgs[-1].event, msgs[-1].json()["code"]), ("close", 4008))
        self.assertLess(len(msgs), len(sent))
        self.assertEqual(sample("odinws_connections_closed_total", reason="slow_consumer",
                                code="4008"), before + 1)
        self.assertEqual([m.data.encode() for m in reader.messages()], [e.envelope for e in sent])


class DropPolicyTests(StreamTestCase):
    settings = {**SlowStreamTests.settings, "outbound.policy": {"default": "drop"}}

    def test_drop_policy_drops_for_a_stalled_stream(self):
        """Under the drop policy a stalled stream loses events (counted) and stays open."""
        stalled = self.stream({"channels": "odin.token.T1.trade"},
                              transport=StalledSocket(IPv4Address("TCP", "10.0.0.1", next(_ports))))
        before = self.shard.stats.dropped["drop"]
        for _ in range(200):
            self.deliver(self.event("T1"))
        self.advance(10)
        self.assertGreater(self.shard.stats.dropped["drop"], before)
        self.assertFalse(stalled.transport.disconnecting)


    def test_dropped_events_are_told_and_recoverable(self):
        """
        A stalled stream under the drop policy is told what it lost: a gap
        event (reason dropped) after the events before the first drop,
        naming each stream lost, with a since vector; a new stream opened
        with it recovers every dropped event, so nothing is lost untold.
        """
        stalled = self.stream({"channels": "odin.token.T1.trade"},
                              transport=StalledSocket(IPv4Address("TCP", "10.0.0.1", next(_ports))))
        sent = []
        for _ in range(20):     # past the 4 KiB buffer, not past what a recovery may send
            sent += self.deliver(self.event("T1"), self.event("T1", partition=1))
        self.assertGreater(self.shard.stats.dropped["drop"], 0)
        msgs = []
        for _ in range(50):
            stalled.transport.drain()
            self.advance(0)
            msgs += stalled.messages()
        msgs = [m for m in msgs if m.event != "subscribed"]
        kinds = [m.event for m in msgs]
        self.assertIn("gap", kinds)
        first_gap = kinds.index("gap")
        got = [m.data.encode() for m in msgs if m.event != "gap"]
        self.assertEqual([m.data.encode() for m in msgs[:first_gap]],
                         [e.envelope for e in sent[:first_gap]])
        # The last one names every stream lost.
        gap = [m for m in msgs if m.event == "gap"][-1].json()
        self.assertEqual((gap["type"], gap["reason"]), ("gap", "dropped"))
        self.assertEqual(set(gap["streams"]), {f"{TOPIC}:0:ep1", f"{TOPIC}:1:ep1"})
        self.assertEqual(self.shard.stats.gaps["dropped"], self.shard.stats.dropped["drop"])
        again = self.stream({"channels": "odin.token.T1.trade", "since": gap["since"]},
                            ip="10.0.0.2")
        ack, *replayed = again.messages()
        self.assertTrue(ack.json()["recovered"])
        recovered = {m.data.encode() for m in replayed}
        self.assertEqual({e.envelope for e in sent} - set(got) - recovered, set())


    def test_dropped_hole_is_counted_once_when_recovered(self):
        """
        A hole (an undecodable record) dropped for a stalled stream is not
        counted as told (it was not: the dropped gap names it); the stream
        recovered from that gap replays it, and counts it then: once in
        all (before, twice: as sent live and again in the replay).
        """
        stalled = self.stream({"channels": "odin.token.T1.trade"},
                              transport=StalledSocket(IPv4Address("TCP", "10.0.0.1", next(_ports))))
        while not self.shard.stats.dropped["drop"]:     # up to the 4 KiB buffer
            self.deliver(self.event("T1"))
        dropped = self.shard.stats.dropped["drop"]
        self.offset[(TOPIC, 0)] += 1
        self.deliver(Hole("invalid_json", "T1", "trade", int(time.time() * 1000), TOPIC, 0,
                          self.offset[(TOPIC, 0)], "ep1"))
        self.assertEqual((self.shard.stats.dropped["drop"] - dropped,
                          self.shard.stats.gaps.get(UNDECODABLE, 0)), (1, 0))
        msgs = []
        for _ in range(50):
            stalled.transport.drain()
            self.advance(0)
            msgs += stalled.messages()
        gap = [m for m in msgs if m.event == "gap" and m.json()["reason"] == "dropped"][-1].json()
        again = self.stream({"channels": "odin.token.T1.trade", "since": gap["since"]},
                            ip="10.0.0.2")
        told = [m for m in again.messages() if m.event == "gap"]
        self.assertEqual([m.json()["reason"] for m in told], [UNDECODABLE])
        self.assertEqual(self.shard.stats.gaps[UNDECODABLE], 1)


class UrlSubscribeTests(StreamTestCase):
    def handshake(self, target: str, ip: str = "10.0.0.1") -> ShardClient:
        client = ShardClient(self.shard, ip)
        self.clients.append(client)
        lines = [f"GET {target} HTTP/1.1", "Host: node", "Upgrade: websocket",
                 "Connection: Upgrade", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
                 "Sec-WebSocket-Version: 13"]
        client.send(("\r\n".join(lines) + "\r\n\r\n").encode())
        return client

    def test_channels_in_the_url_subscribe_at_open(self):
        """/ws?channels=a,b: the first message after the open is the ack; events follow."""
        c = self.handshake("/ws?channels=odin.token.A.trade,odin.token.*.price")
        head, _, rest = c.transport.value().partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.1 101"))
        c._read = len(head) + 4
        self.assertEqual(c.messages(), [{"type": "subscribed", "channels": [
            "odin.token.A.trade", "odin.token.*.price"]}])
        e = self.deliver(self.event("A"))
        self.assertEqual([json.dumps(m, separators=(",", ":")).encode() for m in c.messages()],
                         [e[0].envelope])

    def test_since_in_the_url_recovers(self):
        """/ws?channels=...&since=<position> replays after it, as a subscribe with since."""
        a = self.deliver(self.event("A"), self.event("A"))
        c = self.handshake(f"/ws?channels=odin.token.A.trade&since={TOPIC}:0:ep1:100")
        head = c.transport.value().partition(b"\r\n\r\n")[0]
        c._read = len(head) + 4
        ack, replayed = c.messages()
        self.assertEqual((ack["recovered"], ack["replayed"]), (True, 1))
        self.assertEqual(json.dumps(replayed, separators=(",", ":")).encode(), a[1].envelope)

    def test_bad_list_refuses_the_upgrade_with_json(self):
        """An invalid list is refused before the upgrade: 400 with a JSON body, counted."""
        before = sample("odinws_client_errors_total", code=messages.INVALID_CHANNEL)
        c = self.handshake("/ws?channels=odin.token.A.trade,nope")
        head, _, body = c.transport.value().partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.1 400"), head)
        self.assertIn(b"Content-Type: application/json", head)
        self.assertEqual(json.loads(body)["code"], messages.INVALID_CHANNEL)
        self.assertTrue(c.transport.disconnecting)
        self.assertEqual(sample("odinws_client_errors_total", code=messages.INVALID_CHANNEL),
                         before + 1)
        self.assertEqual(self.shard.subscriptions.total, 0)

    def test_snapshot_too_large_after_open_is_an_error_message(self):
        """The snapshot's size is checked at open: an error message, nothing subscribed."""
        self.reload_shard(limits__max_snapshot_events=1)
        self.deliver(self.event("A"), self.event("B"))
        c = self.handshake("/ws?channels=odin.token.*.trade&snapshot=1")
        head = c.transport.value().partition(b"\r\n\r\n")[0]
        c._read = len(head) + 4
        [err] = c.messages()
        self.assertEqual(err["code"], messages.SNAPSHOT_TOO_LARGE)
        self.assertEqual(self.shard.subscriptions.total, 0)

    def test_plain_ws_url_unchanged(self):
        """/ws without query parameters opens with no message."""
        c = self.connect()
        self.assertEqual(c.messages(), [])


class VectorTests(StreamTestCase):
    def test_round_trip_and_grouping(self):
        """A vector encodes per topic and epoch, partitions ascending, and decodes back."""
        vector = {(TOPIC, 2): ("e1", 7), (TOPIC, 0): ("e1", 5), (TOPIC, 1): ("e2", 3),
                  (PRICES, 0): ("0", 12)}
        text_ = vector_text(vector)
        self.assertEqual(text_, f"{PRICES}~0~0:12;{TOPIC}~e1~0:5,2:7;{TOPIC}~e2~1:3")
        self.assertEqual(positions.decode_vector(text_, 10), vector)

    def test_malformed_vectors(self):
        """Garbage, a partition twice, or too many positions are refused."""
        for bad in ["", "t~e", "t~E~0:1", "t~e~0:1,", "t~e~0:1;t~e~0:2", "t:0:e:1"]:
            self.assertRaises(positions.InvalidPosition, positions.decode_vector, bad, 10)
        self.assertRaises(positions.TooManyPositions, positions.decode_vector,
                          "t~e~" + ",".join(f"{p}:1" for p in range(11)), 10)

    def test_tops_follow_delivery_and_start_from_history(self):
        """Tops made while events exist start from the history; then follow each event."""
        self.deliver(self.event("A"), self.event("A", partition=1))
        tops = Tops(self.shard.history)
        self.assertEqual(tops.text(), f"{TOPIC}~ep1~0:100,1:500")
        tops.update(self.event("A", partition=1))
        self.assertEqual(tops.text(), f"{TOPIC}~ep1~0:100,1:501")


class TakeOverTests(StreamTestCase):
    def test_handshake_timeout_does_not_drop_a_stream(self):
        """
        The WebSocket protocol a stream replaced armed Autobahn's opening
        handshake timer: it is cancelled, so the stream outlives
        limits.handshake_timeout.
        """
        c = self.stream({"channels": "odin.token.A.trade"})
        self.advance(self.config["limits.handshake_timeout"] + 1)
        self.assertFalse(c.transport.disconnecting)
        self.assertFalse(c.lost)

    def test_replace_protocol_under_a_wrapper(self):
        """
        Behind a wrapping protocol (TLS: TLSMemoryBIOProtocol), the wrapper
        delivers to the new protocol; on a plain connection, its protocol.
        """
        from twisted.internet.protocol import Protocol
        from twisted.protocols.policies import ProtocolWrapper, WrappingFactory

        from odin_ws.common.twisted_internals import replace_protocol
        old, new = Protocol(), Protocol()
        wrapper = ProtocolWrapper(WrappingFactory(None), old)
        replace_protocol(wrapper, old, new)
        self.assertIs(wrapper.wrappedProtocol, new)
        self.assertIs(new.transport, wrapper)
        self.assertRaises(TypeError, replace_protocol, wrapper, old, Protocol())


class ReplaySizeTests(StreamTestCase):
    settings = {**StreamTestCase.settings, "outbound.max_buffer_bytes": 4096,
                "kafka.max_record_bytes": 4096}

    def test_replay_that_would_not_fit_is_not_half_sent(self):
        """
        A replay whose SSE messages (each with its id) would not fit the
        outbound buffer, though its WebSocket frames would, answers
        recovered: false (too_large) instead of sending part of it and
        dropping the rest under the slow-client policy.
        """
        for p in range(2, 10):
            self.offset[(TOPIC, p)] = 1000000 * p
        first = self.stream({"channels": "odin.token.A.trade"})
        self.deliver(*[self.event("Q", partition=p) for p in range(10)], self.event("A"))
        last_id = first.messages()[-1].id
        first.drop()
        missed = self.deliver(*[self.event("A") for _ in range(24)])
        websocket_size = sum(len(e.envelope) + 8 for e in missed)
        self.assertLess(websocket_size, 4096 - 1024)
        c = self.stream({"channels": "odin.token.A.trade"}, (f"Last-Event-ID: {last_id}",))
        ack, *rest = c.messages()
        body = ack.json()
        if body["recovered"]:
            self.assertEqual([m.data.encode() for m in rest], [e.envelope for e in missed])
        else:
            self.assertEqual((body["reason"], rest), ("too_large", []))
        self.assertEqual(self.shard.stats.dropped["drop"], 0)


class StaleTests(StreamTestCase):
    def old(self, token: str, partition: int = 0) -> Event:
        key = (TOPIC, partition)
        self.offset[key] += 1
        return Event.build(token, "trade", b'{"o":%d}' % self.offset[key],
                           int((time.time() - 3600) * 1000), TOPIC, partition, self.offset[key],
                           "ep1")

    def test_stale_events_are_told_once_with_a_recovering_since(self):
        """
        Events older than outbound.max_event_age are not streamed live: the
        stream gets one named gap (reason stale) per stale episode, after
        the events before it, naming the position before the first stale
        event and a since vector from which a new stream recovers them.
        """
        s = self.stream({"channels": "odin.token.T1.trade"})
        s.messages()
        before = self.shard.stats.gaps.get("stale", 0)
        self.deliver(self.event("T1"))
        stale = self.deliver(self.old("T1"), self.old("T1"))
        self.deliver(self.old("T1"))
        fresh = self.deliver(self.event("T1"))
        first, gap, last = s.messages()
        self.assertEqual((first.event, gap.event, last.event), (None, "gap", None))
        body = gap.json()
        self.assertEqual((body["reason"], body["streams"]),
                         ("stale", {f"{TOPIC}:0:ep1": f"{TOPIC}:0:ep1:100"}))
        self.assertEqual(last.data.encode(), fresh[0].envelope)
        self.assertEqual(self.shard.stats.gaps["stale"], before + 1)
        again = self.stream({"channels": "odin.token.T1.trade", "since": body["since"]},
                            ip="10.0.0.2")
        ack, *replayed = again.messages()
        self.assertTrue(ack.json()["recovered"])
        self.assertEqual([m.data.encode() for m in replayed][:2], [e.envelope for e in stale])

    def test_a_fresh_event_ends_the_episode(self):
        """After a fresh event of the stream, a new stale run is told again."""
        s = self.stream({"channels": "odin.token.T1.trade"})
        s.messages()
        self.deliver(self.old("T1"))
        self.deliver(self.event("T1"))
        self.deliver(self.old("T1"))
        self.assertEqual([m.event for m in s.messages()], ["gap", None, "gap"])

    def test_gap_after_the_fresh_events_of_its_batch(self):
        """
        Fresh events and stale ones in one delivery batch: the stream gets
        the fresh ones first, then the gap (a client opens a new stream
        from the gap at once, so a gap ahead of them lost them), also on
        the C send loop's path.
        """
        s = self.stream({"channels": "odin.token.T1.trade"})
        s.messages()
        fresh = [self.event("T1") for _ in range(3)]
        self.deliver(*fresh, self.old("T1"), self.old("T1"))
        msgs = s.messages()
        self.assertEqual([m.event for m in msgs], [None, None, None, "gap"])
        self.assertEqual([m.data.encode() for m in msgs[:3]], [e.envelope for e in fresh])


class PythonLoopDropPolicyTests(DropPolicyTests):
    """L{DropPolicyTests} with the pure-Python send loop (the others run the C loop where built)."""

    settings = {**DropPolicyTests.settings, "outbound.native": "off"}
