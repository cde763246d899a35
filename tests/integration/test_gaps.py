"""
Every give-up is told (issue 22), end to end: the real broker, a real
C{twistd odinws} node with real shard processes, C{websockets} clients and
a raw-socket SSE client. Records that cannot be decoded reach their
channel's subscribers as C{gap} messages in their place (live, relayed by
the hub, recovered); events too old to stream are told to SSE streams.
"""

from __future__ import annotations

import json
import time

from tests.helpers import SseSocket
from tests.helpers.node import Client, Node, node_metric, wait_for
from tests.helpers.topics import TopicNodeCase, stream

CHANNEL = "odin.token.T0.trade"


def read(client: Client, count: int) -> list[dict]:
    """The next C{count} events and gaps (events kept by a request first)."""
    got = list(client.events)
    client.events.clear()
    while len(got) < count:
        msg = client.recv(30)
        if msg.get("type") in ("event", "gap"):
            got.append(msg)
    return got


class GapNodeCase(TopicNodeCase):
    prefix = "gap"
    partitions = 1

    def stream(self, node: Node, query: dict) -> SseSocket:
        def attempt():
            try:
                s = SseSocket(node.port, query)
            except OSError:
                return None
            return None if s.status == 503 else s
        s = wait_for(attempt, 30, 0.1, "a stream")
        self.addCleanup(s.close)
        return s

    def good_bad_good(self) -> None:
        """Seq 0, a value that is not JSON, seq 2: all keyed T0 (offsets 0, 1, 2)."""
        for value in (b'{"seq": 0}', b'{"seq": 1', b'{"seq": 2}'):
            self.broker.produce(self.topic, b"T0", value, partition=0)
        self.broker.flush()


class UndecodableTests(GapNodeCase):
    shards = 2

    def test_told_in_place_live_relayed_and_recovered(self):
        """
        Good, undecodable, good on one channel: two WebSocket subscribers
        (one on each shard: one gets the records through the hub) and an SSE
        stream get the event, a gap (undecodable, the bad record's position),
        the event; a client recovering from the first event is told too.
        """
        node = self.node()
        clients = [self.connect(node), self.connect(node)]
        for client in clients:
            client.subscribe(CHANNEL)
        s = self.stream(node, {"channels": CHANNEL})
        self.assertEqual(s.next().event, "subscribed")
        self.good_bad_good()
        hole = f"{self.topic}:0:"
        for client in clients:
            first, gap, last = read(client, 3)
            self.assertEqual((first["type"], first["data"]), ("event", {"seq": 0}))
            self.assertEqual((gap["type"], gap["reason"], gap["detail"], gap["channel"]),
                             ("gap", "undecodable", "invalid_json", CHANNEL))
            [(name, position)] = gap["streams"].items()
            self.assertEqual(name, stream(first["pos"]))
            self.assertTrue(position.startswith(hole) and position.endswith(":1"), position)
            self.assertEqual((last["type"], last["data"]), ("event", {"seq": 2}))
        sse = [s.next(30) for _ in range(3)]
        self.assertEqual([m.event for m in sse], [None, "gap", None])
        self.assertEqual(sse[1].json(), gap)
        self.assertEqual(sse[2].json()["data"], {"seq": 2})

        late = self.connect(node)
        reply = late.request({"type": "subscribe", "channels": [CHANNEL],
                              "since": [first["pos"]], "id": "r"})
        self.assertEqual((reply["type"], reply["recovered"], reply["replayed"]),
                         ("subscribed", True, 2))
        again, after = read(late, 2)
        self.assertEqual(again, gap)
        self.assertEqual(after["data"], {"seq": 2})
        self.assertGreaterEqual(node_metric(node, "odinws_kafka_rejected_total",
                                       'reason="invalid_json"'), 1)

    def test_channel_in_the_value_is_counted_untold(self):
        """
        With the token id in a field of the value, an undecodable record
        has no known channel: nobody is told, and it is counted as untold.
        """
        node = self.node(**{"kafka.token_field": "token"})
        self.broker.produce(self.topic, None, b'{"token": "T0"', partition=0)
        self.broker.flush()
        wait_for(lambda: node_metric(node, "odinws_kafka_untold_total",
                                'reason="invalid_json"') >= 1, 30, 0.3, "an untold record")


class SseStaleTests(GapNodeCase):
    shards = 1

    def test_stale_events_are_told_to_a_stream(self):
        """
        Events older than outbound.max_event_age skip the SSE stream live:
        it gets one gap (stale) naming the position before them and a
        since, then the fresh event; a stream opened with that since
        recovers them.
        """
        node = self.node(**{"outbound.max_event_age": 60})
        s = self.stream(node, {"channels": CHANNEL})
        self.assertEqual(s.next().event, "subscribed")
        self.broker.produce(self.topic, b"T0", b'{"seq": 0}', partition=0)
        self.broker.flush()
        first = s.next(30)
        old = int((time.time() - 3600) * 1000)
        for seq in (1, 2):
            self.broker.produce(self.topic, b"T0", json.dumps({"seq": seq}).encode(),
                                timestamp_ms=old, partition=0)
        self.broker.produce(self.topic, b"T0", b'{"seq": 3}', partition=0)
        self.broker.flush()
        gap, fresh = s.next(30), s.next(30)
        self.assertEqual((first.event, gap.event, fresh.event), (None, "gap", None))
        body = gap.json()
        self.assertEqual(body["reason"], "stale")
        self.assertEqual(body["streams"], {stream(first.json()["pos"]): first.json()["pos"]})
        self.assertEqual(fresh.json()["data"], {"seq": 3})
        again = self.stream(node, {"channels": CHANNEL, "since": body["since"]})
        ack = again.next()
        self.assertTrue(ack.json()["recovered"], ack.data)
        self.assertEqual([again.next(10).json()["data"]["seq"] for _ in range(3)], [1, 2, 3])
