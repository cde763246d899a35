"""
Positions, recovery and snapshots at a shard's WebSocket protocol
(L{odin_ws.shard.clients.recovery}), driven by fakes: what a subscribe with
C{since} or C{snapshot} answers, what it sends, and what it refuses.
"""

from __future__ import annotations

import json
import time

from odin_ws.common.events import Event
from odin_ws.shard.history import positions
from tests.helpers import ShardTestCase, sample, text

TOPIC = "odin.trades"


class RecoveryTestCase(ShardTestCase):
    settings = {"kafka__topics": {TOPIC: "trade", "odin.prices": "price"},
                "limits__max_positions": 10,
                # The fuzz test sends hundreds of messages.
                "limits__message_rate": 100000.0, "limits__message_burst": 100000}

    def setUp(self):
        super().setUp()
        self.offset = {0: 99, 1: 499}

    def event(self, token: str, event_type: str = "trade", partition: int = 0,
              epoch: str = "ep1") -> Event:
        self.offset[partition] += 1
        # Stamped now: history keeps events by age (history.max_age).
        return Event.build(token, event_type, b'{"p":%d}' % self.offset[partition],
                           int(time.time() * 1000), TOPIC, partition, self.offset[partition],
                           epoch)

    def deliver(self, *events: Event) -> list[Event]:
        self.shard.delivery.deliver(list(events))
        return list(events)

    def request(self, client, **msg) -> list[dict]:
        msg.setdefault("type", "subscribe")
        client.send(text(msg))
        return client.messages()


class PositionTests(RecoveryTestCase):
    def test_every_event_carries_its_position(self):
        """A delivered event's envelope has pos = topic:partition:epoch:offset."""
        c = self.connect()
        self.subscribe(c, "odin.token.*.*")
        self.deliver(self.event("A"))
        [msg] = c.messages()
        self.assertEqual(msg["pos"], f"{TOPIC}:0:ep1:100")
        self.assertEqual(positions.decode(msg["pos"]), (TOPIC, 0, "ep1", 100))

    def test_ack_lists_current_positions_when_asked(self):
        """since: [] asks for the current position of every partition (to recover later)."""
        self.deliver(self.event("A", partition=0), self.event("B", partition=1))
        c = self.connect()
        [ack] = self.request(c, channels=["odin.token.A.trade"], since=[], id=1)
        self.assertEqual(ack["positions"], [f"{TOPIC}:0:ep1:100", f"{TOPIC}:1:ep1:500"])
        self.assertEqual((ack["recovered"], ack["replayed"], ack["id"]), (True, 0, 1))


class ReplayTests(RecoveryTestCase):
    def test_replays_missed_events_then_live_without_gap_or_duplicate(self):
        """
        The events after the client's positions that match its channels come
        right after the ack, in order, and the next delivered event follows
        them: nothing missed, nothing twice.
        """
        seen = self.deliver(self.event("A", partition=0), self.event("A", partition=1))
        since = [json.loads(e.envelope)["pos"] for e in seen]
        missed = self.deliver(self.event("A", partition=0), self.event("B", partition=0),
                              self.event("A", partition=1), self.event("A", partition=0))
        c = self.connect()
        got = self.request(c, channels=["odin.token.A.*"], since=since, id="r")
        ack, replayed = got[0], got[1:]
        self.assertEqual((ack["type"], ack["recovered"], ack["replayed"]),
                         ("subscribed", True, 3))
        want = [e for e in missed if e.token == "A"]
        self.assertEqual(sorted(m["pos"] for m in replayed),
                         sorted(json.loads(e.envelope)["pos"] for e in want))
        per_partition = [[m["data"]["p"] for m in replayed if m["pos"].split(":")[1] == p]
                         for p in ("0", "1")]
        self.assertEqual(per_partition, [[101, 103], [501]])
        live = self.deliver(self.event("A", partition=0))
        self.assertEqual([m["pos"] for m in c.messages()],
                         [json.loads(live[0].envelope)["pos"]])

    def test_too_old_gives_recovered_false_and_nothing_replayed(self):
        """A position older than what is retained: recovered false (too_old), no event sent."""
        first = self.deliver(self.event("A"))
        self.shard.history.configure(max_events=2, max_age=0, max_bytes=10**9,
                                     max_channels=100)
        self.deliver(*(self.event("A") for _ in range(5)))
        c = self.connect()
        got = self.request(c, channels=["odin.token.A.trade"],
                           since=[json.loads(first[0].envelope)["pos"]])
        self.assertEqual(len(got), 1)
        self.assertEqual((got[0]["recovered"], got[0]["reason"]), (False, "too_old"))
        # Subscribed all the same: live events come.
        self.deliver(self.event("A"))
        self.assertEqual(len(c.messages()), 1)

    def test_other_epoch_never_replays(self):
        """A position of another incarnation of the topic (recreated) is not recovered."""
        self.deliver(self.event("A"), self.event("A"))
        c = self.connect()
        [ack] = self.request(c, channels=["odin.token.A.trade"], since=[f"{TOPIC}:0:old:100"])
        self.assertEqual((ack["recovered"], ack["reason"]), (False, "other_epoch"))

    def test_ahead_and_unknown_partition(self):
        """
        Past the end of what this node saw (after waiting history.recovery_hold
        for it to catch up), or a partition it never saw (at once, the
        warm-up being over): recovered false.
        """
        self.deliver(self.event("A"))
        c = self.connect()
        self.assertEqual(self.request(c, channels=["odin.token.A.trade"],
                                      since=[f"{TOPIC}:0:ep1:900"]), [])
        self.advance(self.shard.settings.history.recovery_hold)
        [ack] = c.messages()
        self.assertEqual(ack["reason"], "ahead")
        [ack] = self.request(c, channels=["odin.token.A.trade"], since=[f"{TOPIC}:7:ep1:1"])
        self.assertEqual(ack["reason"], "unknown_partition")


class SnapshotTests(RecoveryTestCase):
    def test_snapshot_exact_and_wildcard_then_live(self):
        """The latest event of each matching channel, marked snapshot, then live events."""
        self.deliver(self.event("A", "price"), self.event("A", "price"), self.event("B", "price"),
                     self.event("A", "trade"))
        c = self.connect()
        got = self.request(c, channels=["odin.token.A.price"], snapshot=True)
        self.assertEqual(got[0]["snapshot"], 1)
        self.assertEqual([(m["channel"], m["data"]["p"], m["snapshot"]) for m in got[1:]],
                         [("odin.token.A.price", 101, True)])
        d = self.connect()
        got = self.request(d, channels=["odin.token.*.price"], snapshot=True)
        self.assertEqual(sorted((m["channel"], m["data"]["p"]) for m in got[1:]),
                         [("odin.token.A.price", 101), ("odin.token.B.price", 102)])
        self.deliver(self.event("A", "price"))
        [live] = c.messages()
        self.assertEqual((live["data"]["p"], "snapshot" in live), (104, False))

    def test_first_subscribe_gets_positions_and_snapshot(self):
        """since: [] with snapshot: the current positions and the snapshot, in one subscribe."""
        self.deliver(self.event("A", "price"))
        c = self.connect()
        got = self.request(c, channels=["odin.token.A.price"], since=[], snapshot=True)
        self.assertEqual((got[0]["positions"], got[0]["snapshot"]), ([f"{TOPIC}:0:ep1:100"], 1))
        self.assertEqual([m["snapshot"] for m in got[1:]], [True])

    def test_recovered_subscription_gets_no_snapshot(self):
        """Recovered from real positions: nothing was missed, so no snapshot is sent."""
        seen = self.deliver(self.event("A", "price"))
        c = self.connect()
        got = self.request(c, channels=["odin.token.A.price"],
                           since=[json.loads(seen[0].envelope)["pos"]], snapshot=True)
        self.assertEqual((got[0]["recovered"], "snapshot" in got[0], len(got)), (True, False, 1))

    def test_snapshot_over_the_limit_is_refused(self):
        """More matching channels than limits.max_snapshot_events: error, nothing subscribed."""
        self.shard.reconfigure(self.shard.settings.__class__.from_config(
            self.config.replace(limits__max_snapshot_events=2)))
        self.deliver(*(self.event(t, "price") for t in "ABC"))
        c = self.connect()
        [err] = self.request(c, channels=["odin.token.*.price"], snapshot=True, id=3)
        self.assertEqual((err["type"], err["code"], err["id"]), ("error", "snapshot_too_large", 3))
        self.deliver(self.event("A", "price"))
        self.assertEqual(c.messages(), [])
        self.assertTrue(c.open)


class BadInputTests(RecoveryTestCase):
    def test_bad_positions_refused_connection_usable(self):
        """Malformed, unknown-topic, duplicated and too many positions: an error code, nothing
        subscribed, and the connection keeps working."""
        self.deliver(self.event("A"))
        c = self.connect()
        cases = [
            ("nope", "invalid_position"), (5, "invalid_position"),
            (f"{TOPIC}:0:ep1:-1", "invalid_position"), (f"{TOPIC}:0:EP:1", "invalid_position"),
            ("other.topic:0:ep1:1", "unknown_position"),
            ([f"{TOPIC}:0:a:1", f"{TOPIC}:0:b:2"], "invalid_position"),
            ([f"{TOPIC}:{i}:e:1" for i in range(11)], "too_many_positions"),
            ("x" * 10000, "invalid_position"),
        ]
        for since, code in cases:
            since = since if isinstance(since, list) else [since]
            [err] = self.request(c, channels=["odin.token.A.trade"], since=since, id="b")
            self.assertEqual((err["type"], err["code"]), ("error", code), since[:2])
        [err] = self.request(c, channels=["odin.token.A.trade"], since="x")
        self.assertEqual(err["code"], "invalid_message")
        [err] = self.request(c, channels=["odin.token.A.trade"], snapshot="yes")
        self.assertEqual(err["code"], "invalid_message")
        self.deliver(self.event("A"))
        self.assertEqual(c.messages(), [])   # nothing was subscribed
        self.assertEqual(self.subscribe(c, "odin.token.A.trade")["type"], "subscribed")
        self.deliver(self.event("A"))
        self.assertEqual(len(c.messages()), 1)

    def test_fuzzed_since_never_breaks_the_connection(self):
        """Random since values get an error or an ack, never a close."""
        import random
        rng = random.Random(7)
        alphabet = "abc019:.-_" + TOPIC
        c = self.connect()
        for _ in range(300):
            value = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
            got = self.request(c, channels=["odin.token.A.trade"], since=[value])
            self.assertIn(got[0]["type"], ("error", "subscribed"))
            self.assertTrue(c.open)


class ReplyOrderTests(RecoveryTestCase):
    def test_replies_never_overtake_queued_events(self):
        """
        A pong, an ack or an error answered while events wait for a slow
        client comes after those events, not before (a client that trusts
        an ack's positions the moment it arrives would otherwise lose events).
        """
        from twisted.internet.address import IPv4Address

        from tests.helpers import StalledSocket, parse_frames
        from tests.helpers.cases import _ports
        stalled = self.connect(transport=StalledSocket(IPv4Address("TCP", "10.0.0.9",
                                                                   next(_ports))))
        stalled.send(text({"type": "subscribe", "channels": ["odin.token.A.trade"]}))
        stalled.transport.drain()
        stalled.frames()
        # Enough that Twisted pauses the Outbox and later frames wait in its queue.
        events = []
        for _ in range(15):
            events += self.deliver(*(self.event("A") for _ in range(100)))
        self.assertTrue(stalled.proto.outbox.queue)
        stalled.send(text({"type": "ping", "id": "p"}))
        stalled.send(text({"type": "subscribe", "channels": ["odin.token.B.trade"],
                           "since": [], "id": "s"}))
        stalled.send(text({"type": "subscribe", "channels": ["bad"], "id": "e"}))
        for _ in range(50):
            stalled.transport.drain()
            self.clock.advance(0)
        got = [json.loads(p) for op, p in parse_frames(stalled.transport.value()[stalled._read:])
               if op == 1]
        kinds = [m["type"] for m in got]
        delivered = [m for m in got if m["type"] == "event"]
        self.assertEqual(kinds[len(delivered):], ["pong", "subscribed", "error"])
        seqs = [m["data"]["p"] for m in delivered]
        self.assertEqual(seqs, sorted(seqs))
        self.assertEqual(seqs[-1], json.loads(events[-1].envelope)["data"]["p"])


class StaleEventTests(RecoveryTestCase):
    def test_old_backlog_is_kept_for_recovery_not_sent_live(self):
        """
        Events older than outbound.max_event_age (a backlog read after a
        restart) reach no live subscriber, are counted, and stay
        recoverable; the subscriber is told by a gap notice (stale) with
        the position before them, ahead of the newer events.
        """
        from tests.helpers import sample
        c = self.connect()
        self.subscribe(c, "odin.token.A.trade")
        before = sample("odinws_events_stale_total")
        old = Event.build("A", "trade", b'{"p":1}', int((time.time() - 120) * 1000), TOPIC, 0,
                          100, "ep1")
        self.offset[0] = 100
        fresh = self.event("A")
        self.deliver(old, fresh)
        gap, live = c.messages()
        self.assertEqual(gap, {"type": "gap", "reason": "stale",
                               "streams": {f"{TOPIC}:0:ep1": f"{TOPIC}:0:ep1:99"}})
        self.assertEqual(live["pos"], json.loads(fresh.envelope)["pos"])
        self.assertEqual(sample("odinws_events_stale_total"), before + 1)
        d = self.connect()
        got = self.request(d, channels=["odin.token.A.trade"], since=[f"{TOPIC}:0:ep1:99"])
        self.assertEqual((got[0]["recovered"], [m["data"]["p"] for m in got[1:]]), (True, [1, 101]))

    def test_notice_after_the_fresh_events_of_its_batch(self):
        """
        Fresh events, then a stale one, in one delivery batch: the
        subscriber gets the fresh ones first, then the notice (also on the
        C send loop's path, where the runs were kept while the notice was
        queued directly).
        """
        c = self.connect()
        self.subscribe(c, "odin.token.A.trade")
        fresh = [self.event("A") for _ in range(3)]
        self.offset[0] += 1
        old = Event.build("A", "trade", b'{"p":1}', int((time.time() - 120) * 1000), TOPIC, 0,
                          self.offset[0], "ep1")
        self.deliver(*fresh, old)
        self.assertEqual([m["type"] for m in c.messages()], ["event", "event", "event", "gap"])

    def test_one_notice_per_stale_episode(self):
        """
        A stale backlog in several batches tells each subscriber once per
        stream; after a fresh event of the stream, a new stale run tells again.
        """
        c = self.connect()
        self.subscribe(c, "odin.token.*.trade")
        then = int((time.time() - 120) * 1000)

        def old(offset: int, partition: int = 0) -> Event:
            return Event.build("A", "trade", b'{"p":1}', then, TOPIC, partition, offset, "ep1")
        self.deliver(old(100), old(101))
        self.deliver(old(102), old(500, 1))
        self.assertEqual([sorted(m["streams"]) for m in c.messages()],
                         [[f"{TOPIC}:0:ep1"], [f"{TOPIC}:1:ep1"]])
        self.offset[0] = 102
        self.deliver(self.event("A"))
        self.deliver(old(104))
        self.assertEqual([m["type"] for m in c.messages()], ["event", "gap"])

    def test_told_again_after_recovering_mid_episode(self):
        """
        A subscriber that recovers from a stale notice's position while the
        stale events keep coming is told again of the ones after its
        recovery (they are news to it): none is lost to the race.
        """
        c = self.connect()
        self.subscribe(c, "odin.token.A.trade")
        then = int((time.time() - 120) * 1000)

        def old(offset: int) -> Event:
            return Event.build("A", "trade", b'{"p":1}', then, TOPIC, 0, offset, "ep1")
        self.deliver(old(100))
        [gap] = c.messages()
        got = self.request(c, channels=["odin.token.A.trade"],
                           since=[gap["streams"][f"{TOPIC}:0:ep1"]])
        self.assertEqual([m["pos"] for m in got[1:]], [f"{TOPIC}:0:ep1:100"])
        self.deliver(old(101))
        [again] = c.messages()
        self.assertEqual(again["streams"], {f"{TOPIC}:0:ep1": f"{TOPIC}:0:ep1:100"})

    def test_zero_turns_it_off(self):
        """outbound.max_event_age 0 delivers events whatever their age."""
        self.shard.reconfigure(self.shard.settings.__class__.from_config(
            self.config.replace(outbound__max_event_age=0)))
        c = self.connect()
        self.subscribe(c, "odin.token.A.trade")
        self.deliver(Event.build("A", "trade", b'{"p":1}', 5, TOPIC, 0, 100, "ep1"))
        self.assertEqual(len(c.messages()), 1)


class ReplayRateTests(RecoveryTestCase):
    settings = {**RecoveryTestCase.settings, "limits__replay_rate": 2048,
                "limits__replay_burst": 4096}

    def test_replays_bounded_per_connection(self):
        """
        A replay that fits the buffer, re-requested (issue 23, L3: ~330x
        egress), is sent while the connection's replay bytes stay within
        limits.replay_burst, then refused with replay_rate_limited (its id
        echoed, nothing subscribed, counted) until limits.replay_rate has
        refilled the bucket; another connection is not affected.
        """
        first = self.deliver(self.event("A"))
        since = [json.loads(first[0].envelope)["pos"]]
        missed = self.deliver(*(self.event("A") for _ in range(20)))
        size = sum(len(e.envelope) + 8 for e in missed)
        self.assertLess(size, 4096)
        fits = 4096 // size
        c = self.connect()
        before = sample("odinws_client_errors_total", code="replay_rate_limited")
        for i in range(fits):
            got = self.request(c, channels=["odin.token.A.trade"], since=since, id=i)
            self.assertEqual((got[0]["recovered"], len(got)), (True, 21))
            self.request(c, type="unsubscribe", channels=["odin.token.A.trade"])
        [err] = self.request(c, channels=["odin.token.A.trade"], since=since, id="late")
        self.assertEqual((err["type"], err["code"], err["id"]),
                         ("error", "replay_rate_limited", "late"))
        self.assertEqual(self.shard.subscriptions.count(c.proto.outbox), 0)
        self.assertEqual(sample("odinws_client_errors_total",
                                           code="replay_rate_limited"), before + 1)
        other = self.connect("10.0.0.2")
        got = self.request(other, channels=["odin.token.A.trade"], since=since)
        self.assertEqual(len(got), 21)
        self.advance(size / 2048)
        got = self.request(c, channels=["odin.token.A.trade"], since=since)
        self.assertEqual((got[0]["recovered"], len(got)), (True, 21))
