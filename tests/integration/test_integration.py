"""
End-to-end tests: the real broker, the real C{twistd odinws} parent with
real shard processes, and real C{websockets} clients.
"""

from __future__ import annotations

import json
import os
import signal
import uuid

from prometheus_client.parser import text_string_to_metric_families
from twisted.trial import unittest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.helpers import FAST_KAFKA
from tests.helpers.broker import shared_broker
from tests.helpers.node import Client, Node, http_get, pid_alive, wait_for


class NodeTestCase(unittest.TestCase):
    """Starts a node on fresh topics so tests never see each other's records."""

    shards = 1
    partitions = 1
    extra: dict = {}

    def setUp(self):
        self.broker = shared_broker()
        tag = uuid.uuid4().hex[:8]
        self.topic = f"it-{tag}"
        self.broker.create_topics([self.topic], partitions=self.partitions)
        settings = dict(FAST_KAFKA)
        settings.update({"kafka.topics": {self.topic: "trade"},
                         "kafka.event_type_field": "kind"})
        settings.update(self.extra)
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        self.node = Node(workdir, self.broker.bootstrap, shards=self.shards, settings=settings)
        self.addCleanup(self.node.stop)
        self.node.start()
        self.clients: list[Client] = []

    def client(self, **kw) -> Client:
        c = Client(self.node.url(), **kw)
        self.clients.append(c)
        self.addCleanup(c.close)
        return c

    def produce(self, token: str, kind: str, seq, partition=None) -> dict:
        value = {"kind": kind, "seq": seq}
        self.broker.produce(self.topic, token.encode(), json.dumps(value).encode(),
                            partition=partition)
        return value


class CoreTests(NodeTestCase):
    """One shard: subscriptions, wildcards, envelopes, order, and nothing extra."""

    def test_clients_get_exactly_their_events_in_order(self):
        """Each client receives exactly the events of its channels, in order, once."""
        a = self.client()
        a.subscribe("odin.token.ABC.trade")
        b = self.client()
        b.subscribe("odin.token.*.price")
        c = self.client()
        c.subscribe("odin.token.ABC.*", "odin.token.ABC.trade")  # overlapping patterns
        produced = []
        for i in range(20):
            token = ("ABC", "XYZ")[i % 2]
            kind = ("trade", "price", "liquidity")[i % 3]
            produced.append((token, kind, self.produce(token, kind, i)))
        # End markers: one record per client's last channel, after everything else
        # in the same single partition, so once a client sees it nothing may follow.
        produced.append(("ABC", "trade", self.produce("ABC", "trade", "end-a")))
        produced.append(("ZZZ", "price", self.produce("ZZZ", "price", "end-b")))
        produced.append(("ABC", "liquidity", self.produce("ABC", "liquidity", "end-c")))
        self.broker.flush()

        def expected(match):
            return [(f"odin.token.{t}.{k}", v) for t, k, v in produced if match(t, k)]

        for client, match, last in [
                (a, lambda t, k: t == "ABC" and k == "trade", "end-a"),
                (b, lambda t, k: k == "price", "end-b"),
                (c, lambda t, k: t == "ABC", "end-c")]:
            want = expected(match)
            got = client.collect(len(want))
            self.assertEqual([(e["channel"], e["data"]) for e in got], want)
            self.assertEqual(got[-1]["data"]["seq"], last)
            for e in got:
                self.assertEqual(set(e), {"type", "channel", "data", "ts", "pos"})
                self.assertEqual(e["type"], "event")
                self.assertIsInstance(e["ts"], int)
                # The position: this topic, its only partition, an epoch, an offset.
                topic, partition, epoch, offset = e["pos"].split(":")
                self.assertEqual((topic, partition), (self.topic, "0"))
                self.assertTrue(epoch and offset.isdigit())

    def test_protocol_errors_keep_connection(self):
        """Bad client input gets a specific error and the connection stays usable."""
        c = self.client()
        c.ws.send("{not json")
        self.assertEqual(c.recv()["code"], "invalid_json")
        c.send({"type": "dance", "id": 7})
        reply = c.recv()
        self.assertEqual((reply["code"], reply["id"]), ("unknown_type", 7))
        c.send({"type": "subscribe", "channels": ["odin.token.a.b.c"], "id": "x"})
        self.assertEqual(c.recv()["code"], "invalid_channel")
        c.send({"type": "subscribe", "channels": [f"odin.token.T{i}.trade" for i in range(101)]})
        self.assertEqual(c.recv()["code"], "too_many_channels")
        c.ws.send(b"\x00\x01")
        self.assertEqual(c.recv()["code"], "binary_not_supported")
        self.assertEqual(c.request({"type": "ping", "id": 3}), {"type": "pong", "id": 3})
        c.subscribe("odin.token.OK.trade")
        self.produce("OK", "trade", 1)
        self.broker.flush()
        self.assertEqual(c.collect(1)[0]["data"]["seq"], 1)

    def test_unsubscribe_stops_events(self):
        """After unsubscribing, a channel's events stop; others continue."""
        c = self.client()
        c.subscribe("odin.token.U.trade", "odin.token.V.trade")
        reply = c.request({"type": "unsubscribe", "channels": ["odin.token.U.trade"], "id": 2})
        self.assertEqual(reply, {"type": "unsubscribed", "channels": ["odin.token.U.trade"],
                                 "id": 2})
        self.produce("U", "trade", 1)
        self.produce("V", "trade", 2)
        self.broker.flush()
        self.assertEqual([e["data"]["seq"] for e in c.collect(1)], [2])

    def test_health_and_metrics(self):
        """/health reports the shard and Kafka; /metrics is Prometheus text with shard labels."""
        self.client().subscribe("odin.token.M.trade")
        status, body = self.node.health()
        self.assertEqual(status, 200)
        self.assertTrue(body["kafka_connected"])
        self.assertEqual(body["shards"][0]["kafka"]["state"], "running")
        code, headers, text = http_get(self.node.port, "/metrics")
        self.assertEqual(code, 200)
        self.assertIn('odinws_connections{shard="0"}', text.decode())
        self.assertIn("odinws_dispatch_total", text.decode())
        samples = {(s.name, s.labels.get("shard")): s.value
                   for f in text_string_to_metric_families(text.decode()) for s in f.samples}
        self.assertEqual(samples[("odinws_handshake_seconds_count", "0")], 1)
        self.assertEqual(samples[("odinws_handoff_seconds_count", None)], 1)

    def test_bad_records_skipped_and_counted(self):
        """Records without a key or with invalid JSON are skipped, counted, and lose nothing else."""
        c = self.client()
        c.subscribe("odin.token.*.trade")
        self.broker.produce(self.topic, None, b'{"kind":"trade","seq":0}')
        self.broker.produce(self.topic, b"K", b'"not json')
        self.produce("K", "trade", 1)
        self.broker.flush()
        self.assertEqual([e["data"]["seq"] for e in c.collect(1)], [1])

        def counted():
            text = http_get(self.node.port, "/metrics")[2].decode()
            found = {}
            for family in text_string_to_metric_families(text):
                for sample in family.samples:
                    if sample.name == "odinws_kafka_rejected_total":
                        found[sample.labels["reason"]] = sample.value
            return found.get("no_token") == 1 and found.get("invalid_json") == 1
        wait_for(counted, 10, what="rejections counted")


class MultiShardTests(NodeTestCase):
    """Three shards: placement, relay through the hub, crashes, capacity, stop."""

    shards = 3
    partitions = 3

    def wait_all_assigned(self):
        def assigned():
            shards = self.node.health()[1]["shards"]
            got = [len((s.get("kafka") or {}).get("assigned") or []) for s in shards]
            return sum(got) == self.partitions and all(s["alive"] for s in shards)
        wait_for(assigned, 60, 0.2, "partitions assigned")

    def test_spread_and_exactly_once(self):
        """30 clients spread 10/10/10; every event reaches every client exactly once."""
        clients = [self.client() for _ in range(30)]

        def spread():
            return [s["connections"] for s in self.node.health()[1]["shards"]] == [10, 10, 10]
        wait_for(spread, 20, what="10/10/10 placement")
        for c in clients:
            c.subscribe("odin.token.*.*")
        self.wait_all_assigned()
        for i in range(30):
            self.produce(f"T{i}", "trade", i, partition=i % 3)
        self.broker.flush()
        for c in clients:
            got = [e["data"]["seq"] for e in c.collect(30)]
            self.assertEqual(sorted(got), list(range(30)))

    def test_process_metrics_per_process(self):
        """
        /metrics has the standard process metrics once per process: the
        parent's without a shard label, each shard's labelled with its
        index and read from that shard's own process (its open descriptors
        grow with the clients placed on it, the parent's do not).
        """
        def process_samples() -> dict[tuple[str, str | None], float]:
            text = http_get(self.node.port, "/metrics")[2].decode()
            return {(s.name, s.labels.get("shard")): s.value
                    for f in text_string_to_metric_families(text) for s in f.samples
                    if s.name.startswith("process_")}
        # The group settles first: a shard opens descriptors when it gets its partition.
        self.node.wait_spread()
        before = process_samples()
        for name in ("process_open_fds", "process_max_fds", "process_resident_memory_bytes",
                     "process_virtual_memory_bytes", "process_cpu_seconds_total",
                     "process_start_time_seconds"):
            self.assertEqual({shard for (n, shard) in before if n == name},
                             {None, "0", "1", "2"}, name)
        for shard in (None, "0", "1", "2"):
            self.assertLessEqual(before[("process_open_fds", shard)],
                                 before[("process_max_fds", shard)])
        for _ in range(60):
            self.client()
        wait_for(lambda: [s["connections"] for s in self.node.health()[1]["shards"]]
                 == [20, 20, 20], 30, what="20/20/20 placement")

        # Each shard's 20 clients are 20 descriptors; librdkafka opens and
        # closes a few broker connections meanwhile, hence the margin.
        def grown():
            now = process_samples()
            return all(now[("process_open_fds", shard)]
                       >= before[("process_open_fds", shard)] + 15 for shard in "012") and now
        after = wait_for(grown, 20, 0.2, "each shard's open descriptors up by its 20 clients")
        self.assertLess(after[("process_open_fds", None)],
                        before[("process_open_fds", None)] + 15)

    def test_kill_shard(self):
        """
        kill -9 of a shard: its clients drop, the others get every event
        once, it restarts, and a newcomer (placed on the restarted shard)
        gets only what is produced after it subscribed: never an event the
        node delivered before, which the group may have the restarted shard
        re-read (issue 22).
        """
        clients = [self.client() for _ in range(6)]
        for c in clients:
            c.subscribe("odin.token.*.*")
        self.wait_all_assigned()
        shards = self.node.health()[1]["shards"]
        victim = shards[1]
        os.kill(victim["pid"], signal.SIGKILL)
        # Events keep flowing while the shard is gone and comes back.
        for i in range(15):
            self.produce(f"K{i}", "trade", i, partition=i % 3)
        self.broker.flush()
        dropped, alive = [], []
        for c in clients:
            try:
                c.collect(15, timeout=30)
                alive.append(c)
            except (ConnectionClosed, AssertionError):
                dropped.append(c)
        self.assertEqual(len(dropped), 2)
        for c in alive:
            self.assertEqual(sorted(e["data"]["seq"] for e in c.events), list(range(15)))

        def restarted():
            s = self.node.health()[1]["shards"][1]
            return s["alive"] and s["pid"] != victim["pid"] and s["restarts"] >= 1
        wait_for(restarted, 30, 0.2, "shard restarted")
        newcomer = self.client()
        newcomer.subscribe("odin.token.*.*")
        self.wait_all_assigned()
        for i in range(15, 30):
            self.produce(f"K{i}", "trade", i, partition=i % 3)
        self.broker.flush()
        for c in alive:
            got = [e["data"]["seq"] for e in c.collect(30, timeout=30)]
            self.assertEqual(sorted(got), list(range(30)))
        self.assertEqual(sorted(e["data"]["seq"] for e in newcomer.collect(15, timeout=30)),
                         list(range(15, 30)))
        # Nothing old after them either: a last event per partition, then exactly those.
        for i in range(30, 33):
            self.produce(f"K{i}", "trade", i, partition=i % 3)
        self.broker.flush()
        self.assertEqual(sorted(e["data"]["seq"] for e in newcomer.collect(18, timeout=30)),
                         list(range(15, 33)))

    def test_sigterm_stops_everything(self):
        """SIGTERM: clients get close code 4000, every shard process exits, the parent exits."""
        clients = [self.client() for _ in range(6)]
        pids = self.node.shard_pids()
        self.assertEqual(len(pids), 3)
        self.node.proc.send_signal(signal.SIGTERM)
        codes = []
        for c in clients:
            try:
                c.recv(timeout=30)
            except ConnectionClosed as e:
                codes.append(e.rcvd.code if e.rcvd else None)
        self.assertEqual(codes, [4000] * 6)
        self.node.proc.wait(60)
        for pid in pids:
            wait_for(lambda pid=pid: not pid_alive(pid), 10, what=f"shard {pid} gone")

    def test_no_orphans_when_parent_killed(self):
        """kill -9 of the parent: every shard notices its control channel close and exits."""
        pids = self.node.shard_pids()
        self.assertEqual(len(pids), 3)
        self.node.proc.kill()
        self.node.proc.wait(10)
        for pid in pids:
            wait_for(lambda pid=pid: not pid_alive(pid), 20, what=f"orphan shard {pid} gone")


class CapacityTests(NodeTestCase):
    """A node that is full answers 503 with Retry-After."""

    shards = 2
    extra = {"limits.max_connections_per_shard": 2}

    def test_503_when_full(self):
        """With every shard at capacity the next upgrade gets 503 and Retry-After."""
        for _ in range(4):
            self.client()
        wait_for(lambda: self.node.health()[1]["connections"] == 4, 10, what="4 connections")
        e = self.assertRaises(InvalidStatus, Client, self.node.url())
        self.assertEqual(e.response.status_code, 503)
        self.assertEqual(e.response.headers["Retry-After"], "5")
        status, body = self.node.health()
        self.assertEqual((status, body["status"]), (503, "full"))


class FloodTests(NodeTestCase):
    """A flooding client is limited and closed; 100 others lose nothing."""

    shards = 2
    partitions = 2

    def test_flooder_closed_others_complete(self):
        """100 clients get every event in order while one client floods subscribes."""
        good = [self.client() for _ in range(100)]
        for c in good:
            c.subscribe("odin.token.*.trade")
        flooder = self.client()
        codes = []
        errors = 0
        for i in range(3):
            self.produce("F", "trade", i, partition=0)
        self.broker.flush()
        try:
            for i in range(10000):
                flooder.send({"type": "subscribe", "channels": [f"odin.token.F{i}.trade"]})
        except ConnectionClosed as e:
            codes.append((e.rcvd.code if e.rcvd else None, repr(e)))
        for i in range(3, 60):
            self.produce("F", "trade", i, partition=0)
        self.broker.flush()
        try:
            while True:
                msg = flooder.recv(timeout=20)
                if msg.get("code") == "rate_limited":
                    errors += 1
        except ConnectionClosed as e:
            codes.append((e.rcvd.code if e.rcvd else None, repr(e)))
        self.assertEqual(codes[-1][0], 1008, codes)
        self.assertGreater(errors, 0)
        for c in good:
            self.assertEqual([e["data"]["seq"] for e in c.collect(60)], list(range(60)))
