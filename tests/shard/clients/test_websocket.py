"""
Tests for the per-client and handshake limits of a shard (L{odin_ws.shard.clients.websocket}
with L{odin_ws.shard.service.Shard}): real Autobahn C{ClientProtocol}s of a Shard
built without a control channel (its Kafka child is never started), clients
speaking hand-made frames over in-memory transports, and one
MemoryReactorClock driving every timer, the shard's and Autobahn's.
"""

from __future__ import annotations

import json

from twisted.internet.address import IPv4Address

from odin_ws.common.settings import Settings
from tests.helpers import (
    OPEN,
    ShardClient,
    ShardTestCase,
    StalledSocket,
    client_frame,
    sample,
    text,
)
from tests.helpers.cases import _ports


def close_code(payload: bytes) -> int:
    return int.from_bytes(payload[:2], "big")












class FrameLimitTests(ShardTestCase):
    def test_oversized_frame_closes_1009(self):
        """
        A 1 MiB frame (over limits.max_message_bytes) gets a close frame with
        1009, the connection is dropped when the client does not answer, the
        close is counted with code 1009, and the shard forgets the client.
        """
        client = self.connect()
        self.subscribe(client, "odin.token.T1.trade")
        before = sample("odinws_connections_closed_total", reason="dropped", code="1009")
        client.send(client_frame(1, b'{"type":"ping"}' + b" " * (1 << 20)))
        [(op, payload)] = client.frames()
        self.assertEqual((op, close_code(payload)), (8, 1009))
        self.advance(2.5)   # Autobahn's close handshake timeout
        self.assertTrue(client.lost)
        self.assertEqual(sample("odinws_connections_closed_total", reason="dropped",
                                code="1009"), before + 1)
        self.assertEqual((set(self.shard.connections), self.shard.subscriptions.total,
                          self.shard.connections.per_ip), (set(), 0, {}))
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_frame_at_limit_is_served(self):
        """A message of exactly limits.max_message_bytes is still read (the limit is not off by one)."""
        client = self.connect()
        limit = self.config["limits.max_message_bytes"]
        body = b'{"type":"ping","id":1}'
        client.send(client_frame(1, body + b" " * (limit - len(body))))
        self.assertEqual(client.messages(), [{"type": "pong", "id": 1}])

    def test_invalid_utf8_closes_1007(self):
        """A text frame that is not UTF-8 gets a close frame with 1007."""
        client = self.connect()
        client.send(client_frame(1, b'{"type":"ping","id":"\xff\xfe"}'))
        [(op, payload)] = client.frames()
        self.assertEqual((op, close_code(payload)), (8, 1007))

    def test_binary_frame_refused_connection_stays(self):
        """A binary frame gets a binary_not_supported error; the connection stays usable."""
        client = self.connect()
        before = sample("odinws_client_errors_total", code="binary_not_supported")
        client.send(client_frame(2, b'{"type":"ping"}'))
        [reply] = client.messages()
        self.assertEqual((reply["type"], reply["code"]), ("error", "binary_not_supported"))
        self.assertEqual(sample("odinws_client_errors_total", code="binary_not_supported"),
                         before + 1)
        client.send(text({"type": "ping", "id": 2}))
        self.assertEqual(client.messages(), [{"type": "pong", "id": 2}])
        self.assertTrue(client.open)

    def test_fragmented_control_frame_closes_1002(self):
        """A ping with FIN=0 (control frames must not be fragmented) gets a close with 1002, no pong."""
        client = self.connect()
        client.send(client_frame(9, b"hi", fin=False))
        [(op, payload)] = client.frames()
        self.assertEqual((op, close_code(payload)), (8, 1002))


class RateLimitTests(ShardTestCase):
    def test_burst_then_rate_limited_then_1008(self):
        """
        10,000 subscribe messages in one burst: the first limits.message_burst
        are served, the next limits.rate_strikes get rate_limited errors, then
        a 1008 close and nothing more; another client of the shard still gets
        its events and its answers, and the flooder's subscriptions are gone.
        """
        burst = self.config["limits.message_burst"]
        strikes = self.config["limits.rate_strikes"]
        calm = self.connect("10.0.0.2")
        self.subscribe(calm, "odin.token.CALM.trade")
        flooder = self.connect()
        errors = sample("odinws_client_errors_total", code="rate_limited")
        closes = sample("odinws_client_errors_total", code="rate_limit_close")
        flooder.send(b"".join(
            text({"type": "subscribe", "channels": [f"odin.token.F{i}.trade"]})
            for i in range(10000)))
        frames = flooder.frames()
        replies = [json.loads(p) for op, p in frames if op == 1]
        self.assertEqual([r["type"] for r in replies], ["subscribed"] * burst + ["error"] * strikes)
        self.assertEqual({r["code"] for r in replies[burst:]}, {"rate_limited"})
        self.assertEqual((frames[-1][0], close_code(frames[-1][1])), (8, 1008))
        self.assertEqual(sample("odinws_client_errors_total", code="rate_limited"),
                         errors + strikes)
        self.assertEqual(sample("odinws_client_errors_total", code="rate_limit_close"),
                         closes + 1)
        self.assertTrue(self.audited("sustained rate limit"))

        # The flooder is closing: no event frame may follow its close frame.
        self.publish("F0")
        self.assertEqual(flooder.frames(), [])
        self.assertEqual(self.publish("CALM"), calm.frames()[0][1])
        calm.send(text({"type": "ping", "id": "still here"}))
        self.assertEqual(calm.messages(), [{"type": "pong", "id": "still here"}])
        self.advance(2.5)
        self.assertTrue(flooder.lost)
        self.assertEqual(self.shard.subscriptions.total, 1)
        self.assertTrue(calm.open)

    def test_control_frame_flood_closes_1008(self):
        """
        Empty pings, and empty pongs, count in the message rate (issue 23,
        H4): of 10,000 in one read, the first limits.message_burst pings are
        answered, then rate_limited errors, then a 1008 close; the flooder
        is read no more, and another client of the shard is still served.
        """
        burst = self.config["limits.message_burst"]
        strikes = self.config["limits.rate_strikes"]
        calm = self.connect("10.0.0.2")
        self.subscribe(calm, "odin.token.CALM.trade")
        for opcode, answers in ((9, burst), (10, 0)):
            flooder = self.connect("10.0.0.3")
            flooder.send(client_frame(opcode, b"") * 10000)
            frames = flooder.frames()
            self.assertEqual([op for op, _ in frames[:answers]], [10] * answers)
            errors = [json.loads(p) for op, p in frames[answers:-1]]
            self.assertEqual([e.get("code") for e in errors], ["rate_limited"] * strikes)
            self.assertEqual((frames[-1][0], close_code(frames[-1][1])), (8, 1008))
            self.assertEqual(flooder.transport.producerState, "paused")
            self.assertEqual(self.publish("CALM"), calm.frames()[0][1])
            self.advance(2.5)
            self.assertTrue(flooder.lost)
        self.assertTrue(calm.open)

    def test_recoveries_and_snapshots_cost_more_tokens(self):
        """
        A subscribe with since or snapshot spends limits.recovery_cost tokens
        (5) of the message rate, a plain one 1 (issue 23): of 20 snapshot
        subscribes in one burst of 50 tokens, 10 are answered, then
        rate_limited errors; plain pings are served again once tokens refill.
        """
        burst = self.config["limits.message_burst"]
        cost = self.config["limits.recovery_cost"]
        self.assertEqual((burst, cost), (50, 5))
        client = self.connect()
        client.send(b"".join(
            text({"type": "subscribe", "channels": [f"odin.token.S{i}.trade"],
                  "snapshot": True}) for i in range(20)))
        replies = client.messages()
        self.assertEqual([r["type"] for r in replies], ["subscribed"] * 10 + ["error"] * 10)
        self.assertEqual({r["code"] for r in replies[10:]}, {"rate_limited"})
        self.advance(10)
        client.send(text({"type": "ping", "id": 1}) * 3)
        self.assertEqual([m["type"] for m in client.messages()], ["pong"] * 3)

    def test_slowing_down_is_forgiven(self):
        """A client that pauses after hitting the limit is served again and not closed."""
        burst = self.config["limits.message_burst"]
        client = self.connect()
        ping = text({"type": "ping"})
        client.send(ping * (burst + 5))
        self.assertEqual([m["type"] for m in client.messages()], ["pong"] * burst + ["error"] * 5)
        self.advance(10)   # tokens refill, strikes decay
        client.send(ping * burst)
        self.assertEqual([m["type"] for m in client.messages()], ["pong"] * burst)
        self.assertTrue(client.open)


class SubscriptionLimitTests(ShardTestCase):
    settings = {"limits.max_subscriptions": 3}

    def test_too_many_subscriptions(self):
        """
        Past limits.max_subscriptions a subscribe is refused whole with
        too_many_subscriptions (its id echoed); channels already held do not
        count twice.
        """
        client = self.connect()
        self.subscribe(client, "odin.token.A.trade", "odin.token.B.trade")
        reply = self.subscribe(client, "odin.token.C.trade", "odin.token.D.trade", id=7)
        self.assertEqual((reply["type"], reply["code"], reply["id"]),
                         ("error", "too_many_subscriptions", 7))
        self.assertEqual(self.shard.subscriptions.count(client.proto.outbox), 2)
        reply = self.subscribe(client, "odin.token.A.trade", "odin.token.C.trade")
        self.assertEqual(reply["type"], "subscribed")
        self.assertEqual(self.shard.subscriptions.count(client.proto.outbox), 3)

    def test_channel_name_too_long(self):
        """A channel longer than limits.max_channel_length is invalid_channel; one at the limit is fine."""
        limit = self.config["limits.max_channel_length"]
        client = self.connect()
        # Segments are at most 128 characters: the event type makes up the rest.
        fits = "odin.token." + "T" * 128 + "." + "e" * (limit - len("odin.token..") - 128)
        self.assertEqual(len(fits), limit)
        self.assertEqual(self.subscribe(client, fits)["type"], "subscribed")
        reply = self.subscribe(client, fits + "e")
        self.assertEqual((reply["type"], reply["code"]), ("error", "invalid_channel"))
        self.assertEqual(self.shard.subscriptions.count(client.proto.outbox), 1)


class SubscriptionShareTests(ShardTestCase):
    settings = {"limits.max_subscriptions": 10, "limits.max_shard_subscriptions": 100,
                "limits.ip_subscription_share": 0.2}

    def test_a_few_addresses_cannot_fill_the_shard(self):
        """
        With limits.ip_subscription_share 0.2 of a 100-subscription shard,
        four addresses filling what they may (two connections of 10 each)
        get server_subscription_limit on a third connection, and a fifth
        address's subscribe is still accepted (issue 23, M2); a closed
        connection gives its address room back.
        """
        held = []
        for n in range(1, 5):
            for _ in range(2):
                client = self.connect(f"10.0.0.{n}")
                held.append(client)
                reply = self.subscribe(client, *(f"odin.token.T{n}x{i}.trade" for i in range(10)))
                self.assertEqual(reply["type"], "subscribed")
            third = self.connect(f"10.0.0.{n}")
            reply = self.subscribe(third, "odin.token.X.trade", id=3)
            self.assertEqual((reply["type"], reply["code"], reply["id"]),
                             ("error", "server_subscription_limit", 3))
        fifth = self.connect("10.0.0.5")
        self.assertEqual(self.subscribe(fifth, "odin.token.X.trade")["type"], "subscribed")
        held[0].transport.loseConnection()
        held[0].settle()
        again = self.connect("10.0.0.1")
        self.assertEqual(self.subscribe(again, "odin.token.Y.trade")["type"], "subscribed")


class KeepaliveTests(ShardTestCase):
    settings = {"keepalive.idle_timeout": 0}

    def test_silent_client_dropped_after_ping_timeout(self):
        """
        A client that never answers pings is dropped once
        keepalive.ping_interval + keepalive.ping_timeout have passed; one that
        answers stays.
        """
        interval = self.config["keepalive.ping_interval"]
        timeout = self.config["keepalive.ping_timeout"]
        silent, answering = self.connect(), self.connect("10.0.0.2")
        self.advance(interval + 0.5)   # Autobahn batches timers in 0.2 s buckets
        self.assertEqual([op for op, _ in silent.frames()], [9])
        [(op, ping)] = answering.frames()
        self.assertEqual(op, 9)
        answering.send(client_frame(10, ping))
        self.advance(timeout - 1)
        self.assertTrue(silent.open)
        self.advance(1)
        self.assertTrue(silent.lost)
        self.assertTrue(silent.transport.disconnecting)
        self.assertTrue(answering.open)
        self.assertEqual(set(self.shard.connections), {answering.proto})

    def test_message_answers_ping(self):
        """
        A client that sends a message after a ping instead of its pong is
        alive (Autobahn's rule: any traffic), and is pinged again later.
        """
        interval = self.config["keepalive.ping_interval"]
        client = self.connect()
        self.advance(interval + 0.5)
        self.assertEqual([op for op, _ in client.frames()], [9])
        client.send(text({"type": "ping", "id": 1}))
        self.assertEqual([op for op, _ in client.frames()], [1])
        self.advance(self.config["keepalive.ping_timeout"] + 0.5)
        self.assertTrue(client.open)
        self.advance(interval)
        self.assertEqual([op for op, _ in client.frames()], [9])

    def test_one_timer_for_all_connections(self):
        """
        Pings come from the shard's wheel: an open connection holds no
        keepalive timer of its own (Autobahn's 312 bytes), and one that
        closed is out of the wheel.
        """
        clients = [self.connect(f"10.0.0.{i}") for i in range(1, 4)]
        for client in clients:
            self.assertIsNone(client.proto.autoPingPendingCall)
            self.assertIsNone(client.proto.autoPingTimeoutCall)
        self.assertEqual(len(self.shard.factory.pings), 3)
        clients[0].transport.loseConnection()
        clients[0].settle()
        self.assertTrue(clients[0].lost)
        self.assertEqual(len(self.shard.factory.pings), 2)

    def test_no_pings_when_interval_zero(self):
        """keepalive.ping_interval 0 means no pings and no ping timeout."""
        self.shard.reconfigure(Settings.from_config(
            self.config.replace(**{"keepalive.ping_interval": 0})))
        client = self.connect()
        self.advance(3600)
        self.assertEqual(client.frames(), [])
        self.assertTrue(client.open)


class IdleTests(ShardTestCase):
    settings = {"keepalive.ping_interval": 0}

    def test_idle_without_subscription_closed_1000(self):
        """
        A connection that never subscribes is closed with 1000 after
        keepalive.idle_timeout; one that subscribed stays open.
        """
        idle_timeout = self.config["keepalive.idle_timeout"]
        idle, busy = self.connect(), self.connect("10.0.0.2")
        self.subscribe(busy, "odin.token.T1.trade")
        self.advance(idle_timeout - 1)
        self.assertEqual(idle.frames(), [])
        self.advance(1)
        [(op, payload)] = idle.frames()
        self.assertEqual((op, close_code(payload)), (8, 1000))
        self.advance(idle_timeout * 10)
        self.assertTrue(idle.lost)
        self.assertTrue(busy.open)
        self.assertEqual(busy.frames(), [])


class HandshakeTimeoutTests(ShardTestCase):
    def test_unfinished_handshake_dropped(self):
        """
        A handed-over connection that never completes its WebSocket handshake
        is dropped after limits.handshake_timeout; a completed one is not.
        """
        timeout = self.config["limits.handshake_timeout"]
        done = self.connect()
        stuck = ShardClient(self.shard, "10.0.0.2")
        self.clients.append(stuck)
        stuck.send(b"GET /ws HTTP/1.1\r\nHost: node\r\nUpgrade: websocket\r\n")
        self.advance(timeout - 0.5)
        self.assertFalse(stuck.lost)
        self.advance(1)
        self.assertTrue(stuck.lost)
        self.assertEqual(stuck.transport.value(), b"")
        self.assertTrue(done.open)
        self.assertEqual(set(self.shard.connections), {done.proto})


class AdmissionTests(ShardTestCase):
    settings = {"limits.allowed_origins": ["https://app.example.com"],
                "limits.max_connections_per_ip": 2,
                "limits.trusted_proxies": ["10.9.9.9"]}

    def test_origin_allow_list(self):
        """Only an Origin in limits.allowed_origins is let in; others (and none) get 403, counted."""
        before = sample("odinws_rejected_connections_total", status="403", reason="origin")
        self.connect(headers=("Origin: https://app.example.com",))
        self.connect(headers=("Origin: https://evil.example.com",), expect=403)
        self.connect(expect=403)
        self.assertEqual(sample("odinws_rejected_connections_total", status="403",
                                reason="origin"), before + 2)
        self.assertTrue(self.audited("origin"))
        self.assertEqual(len(self.shard.connections), 1)

    def test_per_ip_connections(self):
        """
        Past limits.max_connections_per_ip from one address: 429 (counted);
        other addresses unaffected; a closed connection frees its place.
        """
        origin = ("Origin: https://app.example.com",)
        before = sample("odinws_rejected_connections_total", status="429", reason="per_ip")
        first = self.connect(headers=origin)
        self.connect(headers=origin)
        self.connect(headers=origin, expect=429)
        self.connect("10.0.0.2", headers=origin)
        self.assertEqual(sample("odinws_rejected_connections_total", status="429",
                                reason="per_ip"), before + 1)
        self.assertEqual(self.shard.connections.per_ip, {"10.0.0.1": 2, "10.0.0.2": 1})
        first.transport.loseConnection()
        first.settle()
        self.connect(headers=origin)
        self.assertEqual(self.shard.connections.per_ip, {"10.0.0.1": 2, "10.0.0.2": 1})

    def test_forwarded_for_only_from_trusted_proxies(self):
        """
        X-Forwarded-For names the client (its last entry) only when the peer
        is in limits.trusted_proxies; from anyone else it is ignored.
        """
        def via(peer: str, forwarded: str, expect: int = 101) -> ShardClient:
            return self.connect(peer, ("Origin: https://app.example.com",
                                       f"X-Forwarded-For: {forwarded}"), expect=expect)

        for i in range(3):
            self.assertEqual(via("10.9.9.9", f"1.1.1.{i}").proto.session.client_ip, f"1.1.1.{i}")
        self.assertEqual(via("10.9.9.9", "6.6.6.6, 1.1.1.0").proto.session.client_ip, "1.1.1.0")
        via("10.9.9.9", "1.1.1.0", expect=429)
        self.assertEqual(via("10.0.0.7", "2.2.2.1").proto.session.client_ip, "10.0.0.7")
        via("10.0.0.7", "2.2.2.2")
        via("10.0.0.7", "2.2.2.3", expect=429)
        self.assertNotIn("2.2.2.1", self.shard.connections.per_ip)


class LiveRateTests(ShardTestCase):
    """limits.message_rate and limits.message_burst reloaded reach open connections (issue 16)."""

    def pings(self, client: ShardClient, n: int) -> list[str]:
        """Send C{n} pings at once; the types of the answers."""
        client.send(text({"type": "ping"}) * n)
        return [m["type"] for m in client.messages()]

    def test_cut_reaches_an_open_connection(self):
        """
        After a reload to 1 message per second (burst 1), a connection
        opened before it gets 1 pong of 20 pings, the rest rate_limited,
        as a connection opened after it does.
        """
        old = self.connect()
        self.reload_shard(**{"limits.message_rate": 1.0,
                                                 "limits.message_burst": 1})
        new = self.connect("10.0.0.2")
        for client in (old, new):
            self.assertEqual(self.pings(client, 20), ["pong"] + ["error"] * 19)
            self.assertTrue(client.open)

    def test_raise_reaches_an_open_connection(self):
        """
        A connection limited to 1 message per second gets 5 pongs a second
        later once a reload allowed 10 per second (burst 5).
        """
        self.reload_shard(**{"limits.message_rate": 1.0,
                                                 "limits.message_burst": 1})
        client = self.connect()
        self.assertEqual(self.pings(client, 1), ["pong"])
        self.reload_shard(**{"limits.message_rate": 10.0,
                                                 "limits.message_burst": 5})
        self.advance(1)
        self.assertEqual(self.pings(client, 10), ["pong"] * 5 + ["error"] * 5)

    def test_outbound_limits_reach_an_open_connection(self):
        """outbound.max_buffer_bytes and disconnect_grace reloaded reach an open connection's outbox."""
        client = self.connect()
        self.reload_shard(**{"outbound.max_buffer_bytes": 8192,
                                                 "kafka.max_record_bytes": 8192,
                                                 "outbound.disconnect_grace": 1.5})
        box = client.proto.outbox
        self.assertEqual((box.limit, box.grace), (8192, 1.5))
        self.assertEqual(self.shard.settings.outbound.max_buffer_bytes, 8192)

    def test_flush_delay_reaches_the_fanout(self):
        """outbound.flush_delay reloaded is the shard's flush window, and 0 switches it off."""
        self.assertEqual(self.shard.fanout.delay, 0.0)
        self.reload_shard(**{"outbound.flush_delay": 0.002})
        self.assertEqual(self.shard.fanout.delay, 0.002)
        self.reload_shard(**{"outbound.flush_delay": 0.0})
        self.assertEqual(self.shard.fanout.delay, 0.0)


class SlowConsumerTests(ShardTestCase):
    settings = {"outbound.policy": {"default": "disconnect"},
                "outbound.max_buffer_bytes": 4096,
                "kafka.max_record_bytes": 4096,
                "keepalive.ping_interval": 0}

    def test_stalled_client_closed_4008(self):
        """
        Under the disconnect policy, a client that stops reading is closed with
        4008 once it stayed over outbound.max_buffer_bytes for
        outbound.disconnect_grace; no event follows the close frame, the close
        is counted, and a reading client of the same channel keeps its events.
        """
        grace = self.config["outbound.disconnect_grace"]
        peer = IPv4Address("TCP", "10.0.0.1", next(_ports))
        stalled = self.connect(transport=StalledSocket(peer))
        reader = self.connect("10.0.0.2")
        for client in (stalled, reader):
            client.send(text({"type": "subscribe", "channels": ["odin.token.T1.trade"]}))
        stalled.transport.drain()
        before = sample("odinws_connections_closed_total", reason="slow_consumer", code="4008")
        sent = [self.publish("T1") for _ in range(200)]   # ~18 KB: past Twisted's and our limit
        self.advance(grace - 0.5)
        self.assertTrue(stalled.open)
        self.advance(1)
        self.assertNotEqual(stalled.proto.state, OPEN)
        self.advance(2.5)   # the client answers no close frame: dropped
        self.assertTrue(stalled.transport.aborted)
        stalled.transport.drain()
        frames = stalled.frames()
        self.assertEqual([op for op, _ in frames[1:-1]], [1] * (len(frames) - 2))
        self.assertEqual((frames[-1][0], close_code(frames[-1][1])), (8, 4008))
        self.assertLess(len(frames), len(sent) + 2)
        self.assertEqual(sample("odinws_connections_closed_total", reason="slow_consumer",
                                code="4008"), before + 1)
        self.assertEqual([p for op, p in reader.frames() if op == 1][1:], sent)
        self.assertTrue(reader.open)


class CloseCodeLabelTests(ShardTestCase):
    def test_client_close_codes_make_a_bounded_label_set(self):
        """
        1000 clients closing with 1000 distinct codes of their choosing
        (3000-4999) add at most a few series to odinws_connections_closed,
        every code label from the fixed set (the documented codes as
        themselves, the rest per range); before, each code became a
        series of its own, so clients could grow the metrics without bound.
        """
        from odin_ws.common import metrics

        def series():
            return {tuple(sorted(s.labels.items()))
                    for family in metrics.REGISTRY.collect()
                    if family.name == "odinws_connections_closed"
                    for s in family.samples if s.name.endswith("_total")}

        before = series()
        free = [c for c in range(3000, 5000) if c not in metrics.CLOSE_CODES]
        codes = free[:500] + free[-500:]
        self.assertEqual(len(set(codes)), 1000)
        for n, code in enumerate(codes):
            client = self.connect(f"10.1.{n // 250}.{n % 250}")
            client.send(client_frame(8, code.to_bytes(2, "big") + b"bye"))
            self.assertTrue(client.lost)
        after = series()
        self.assertLessEqual(len(after - before), 2)
        self.assertLessEqual({dict(labels)["code"] for labels in after},
                             metrics.CLOSE_CODE_LABELS)
        self.assertEqual(metrics.close_code_label(4001), "4001")
        self.assertEqual(metrics.close_code_label(3999), "other_3xxx")
        self.assertEqual(metrics.close_code_label(4999), "other_4xxx")
        self.assertEqual(metrics.close_code_label(None), "none")

    def test_client_sent_server_codes_are_not_server_decisions(self):
        """
        A client closing with 4008 (or 4000, 4001) is not counted as a slow
        consumer the server disconnected (issue 23, L4): its close is
        counted as clean with code other_4xxx, and no slow_consumer series
        moves.
        """
        slow = sample("odinws_connections_closed_total", reason="slow_consumer", code="4008")
        other = sample("odinws_connections_closed_total", reason="clean", code="other_4xxx")
        for n, code in enumerate((4008, 4000, 4001)):
            client = self.connect(f"10.2.0.{n + 1}")
            client.send(client_frame(8, code.to_bytes(2, "big") + b"bye"))
            self.assertTrue(client.lost)
        self.assertEqual(sample("odinws_connections_closed_total", reason="slow_consumer",
                                code="4008"), slow)
        self.assertEqual(sample("odinws_connections_closed_total", reason="clean",
                                code="other_4xxx"), other + 3)


class ShardSubscriptionBudgetTests(ShardTestCase):
    # No per-address share: the shard's budget is what is tested here.
    settings = {"limits.max_shard_subscriptions": 5, "limits.ip_subscription_share": 1}

    def test_budget_refuses_whole_subscribe_across_connections(self):
        """
        Connections from many addresses together cannot take a shard past
        limits.max_shard_subscriptions: the subscribe that would is refused
        whole with server_subscription_limit (its id echoed), nothing of it
        is subscribed (no event of its channels arrives), and the room
        left by a client that goes is usable again; a reload raises the
        budget for what comes next (issue 16: before, only the
        per-connection limit bounded what anonymous clients pin).
        """
        first, second = self.connect("10.0.0.1"), self.connect("10.0.0.2")
        channels = [f"odin.token.T{i}.trade" for i in range(4)]
        self.assertEqual(self.subscribe(first, *channels)["type"], "subscribed")
        reply = self.subscribe(second, "odin.token.X.trade", "odin.token.Y.trade", id=9)
        self.assertEqual((reply["type"], reply["code"], reply["id"]),
                         ("error", "server_subscription_limit", 9))
        self.assertEqual((self.shard.subscriptions.total,
                          self.shard.subscriptions.count(second.proto.outbox)), (4, 0))
        self.publish("X")
        self.assertEqual(second.frames(), [])
        self.assertEqual(sample("odinws_client_errors_total", code="server_subscription_limit")
                         > 0, True)
        self.assertEqual(self.subscribe(second, "odin.token.X.trade")["type"], "subscribed")
        first.send(client_frame(8, (1000).to_bytes(2, "big")))
        self.assertEqual(self.shard.subscriptions.total, 1)
        self.assertEqual(self.subscribe(second, *channels)["type"], "subscribed")
        self.assertEqual(self.subscribe(second, "odin.token.Z.trade")["code"],
                         "server_subscription_limit")
        self.reload_shard(**{"limits.max_shard_subscriptions": 6})
        self.assertEqual(self.subscribe(second, "odin.token.Z.trade")["type"], "subscribed")
