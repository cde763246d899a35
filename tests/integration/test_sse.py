"""
Server-Sent Events and subscribe by URL end to end (issue 14): the real
broker, real C{twistd odinws} nodes with real shard processes, a raw-socket
SSE client (what curl does) and the C{websockets} library.
"""

from __future__ import annotations

import json
import os
import signal
from urllib.parse import quote

from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from tests.helpers import SseSocket
from tests.helpers.node import Node, node_metric, wait_for
from tests.helpers.topics import TopicNodeCase

ALL = "odin.token.*.*"


class SseNodeCase(TopicNodeCase):
    prefix = "sse"

    def stream(self, node: Node, query: dict, headers: tuple[str, ...] = (),
               **kw) -> SseSocket:
        def attempt():
            try:
                s = SseSocket(node.port, query, headers, **kw)
            except OSError:
                return None
            if s.status == 503:    # a shard due back: retry, as EventSource would
                return None
            return s
        s = wait_for(attempt, 30, 0.1, "a stream")
        self.addCleanup(s.close)
        return s

    def read(self, s: SseSocket, got: dict[int, list[int]], total: int,
             ids: list[str] | None = None) -> None:
        """Read events until C{total} seqs arrived, by partition."""
        def enough():
            if sum(map(len, got.values())) >= total:
                return True
            try:
                msg = s.next(0.5)
            except TimeoutError:
                return False
            if msg.event is None:
                event = msg.json()
                partition = int(event["pos"].split(":")[1])
                got.setdefault(partition, []).append(event["data"]["seq"])
                if ids is not None:
                    ids.append(msg.id)
            return sum(map(len, got.values())) >= total
        wait_for(enough, 60, 0, f"{total} events")


class StreamTests(SseNodeCase):
    shards = 1

    def test_events_arrive_with_vector_ids(self):
        """
        A raw GET /sse gets text/event-stream: the subscribed event, then every
        produced event in order per partition, each with the WebSocket JSON
        (pos included) and an id naming every partition delivered so far.
        """
        node = self.node()
        s = self.stream(node, {"channels": ALL})
        self.assertEqual(s.status, 200)
        self.assertTrue(s.headers["content-type"].startswith("text/event-stream"))
        ack = s.next()
        self.assertEqual((ack.event, ack.json()["channels"]), ("subscribed", [ALL]))
        self.produce(12)
        got: dict[int, list[int]] = {}
        ids: list[str] = []
        self.read(s, got, 12, ids)
        self.assertEqual(got, self.produced)
        self.assertTrue(all(i and i.startswith(self.topic + "~") for i in ids), ids)
        # Once both partitions delivered, the id names both.
        self.assertRegex(ids[-1], rf"^{self.topic}~[0-9a-z]+~0:\d+,1:\d+$")

    def test_bad_input_answers_before_the_stream_and_is_counted(self):
        """
        A bad channel list and a bad Last-Event-ID get 400 with a JSON body
        (no stream), counted in the node's rejected-connections metric.
        """
        node = self.node()
        s = SseSocket(node.port, {"channels": "odin.token.A.b.c"})
        self.assertEqual((s.status, s.error()["code"]), (400, "invalid_channel"))
        s = SseSocket(node.port, {"channels": ALL}, ("Last-Event-ID: nonsense~",))
        self.assertEqual((s.status, s.error()["code"]), (400, "invalid_position"))
        s = SseSocket(node.port, {})
        self.assertEqual((s.status, s.error()["code"]), (400, "invalid_message"))
        wait_for(lambda: node_metric(node, "odinws_rejected_connections_total", 'status="400"',
                                     'reason="invalid_') >= 3, 10, 0.3, "the refusals counted")

    def test_subscribe_by_url_over_websocket(self):
        """
        /ws?channels=... with the websockets library: the first message is
        the ack, events follow; a bad list refuses the upgrade with 400 and
        a JSON body.
        """
        node = self.node()
        with connect(node.url("/ws?channels=" + ALL), open_timeout=10) as ws:
            self.assertEqual(json.loads(ws.recv(10)), {"type": "subscribed", "channels": [ALL]})
            self.produce(3)
            events = [json.loads(ws.recv(10)) for _ in range(3)]
            self.assertEqual(sorted(e["data"]["seq"] for e in events), [0, 1, 2])
        with self.assertRaises(InvalidStatus) as caught:
            connect(node.url("/ws?channels=nope"), open_timeout=10)
        response = caught.exception.response
        self.assertEqual(response.status_code, 400)
        self.assertEqual(json.loads(response.body)["code"], "invalid_channel")


class UrlOptionsTests(SseNodeCase):
    shards = 1

    def test_filter_and_max_rate_on_a_stream(self):
        """
        ?filter= on an event stream delivers exactly the events whose data
        passes it, ?max_rate= caps it ending on the latest; options a stream cannot have
        or that are bad are refused before the stream with 400 and the
        code a subscribe message would get.
        """
        node = self.node()
        keep = {1, 4, 7, 9}
        s = self.stream(node, {"channels": ALL,
                               "filter": json.dumps({"seq": {"in": sorted(keep)}})})
        capped = self.stream(node, {"channels": "odin.token.T0.*", "max_rate": "0.5"})
        for stream in (s, capped):
            self.assertEqual((stream.status, stream.next().event), (200, "subscribed"))
        self.produce(12)
        got: dict[int, list[int]] = {}
        self.read(s, got, len(keep))
        self.assertEqual(sorted(seq for seqs in got.values() for seq in seqs), sorted(keep))
        # T0 has seqs 0, 3, 6, 9, produced at once: the first at once, the
        # latest at the end of the 2 s interval, what came between skipped.
        ends: dict[int, list[int]] = {}
        self.read(capped, ends, 2)
        self.assertEqual(sum(ends.values(), []), [0, 9])
        for query, code in (({"delta": "1"}, "bad_delta"), ({"delta": "fossil"}, "bad_delta"),
                            ({"max_rate": "1000"}, "bad_max_rate"),
                            ({"max_rate": "fast"}, "bad_max_rate"),
                            ({"filter": '{"seq":{"like":1}}'}, "bad_filter"),
                            ({"filter": "{nope"}, "bad_filter")):
            refused = SseSocket(node.port, {"channels": ALL, **query})
            self.assertEqual((refused.status, refused.error()["code"]), (400, code), query)

    def test_options_of_a_subscribe_by_url_over_websocket(self):
        """
        /ws?channels=...&delta=compact&filter=... with the websockets
        library: only the passing events arrive, the first whole with its
        stream id; a bad filter refuses the upgrade with 400 and a JSON body.
        """
        node = self.node()
        keep = [2, 5, 8, 11]
        url = node.url("/ws?channels=odin.token.T2.*&delta=compact&filter="
                       + quote(json.dumps({"seq": {"in": keep}})))
        with connect(url, open_timeout=10) as ws:
            self.assertEqual(json.loads(ws.recv(10))["type"], "subscribed")
            self.produce(12)
            got = [json.loads(ws.recv(10)) for _ in keep]
            self.assertEqual(got[0]["data"]["seq"], 2)
            self.assertIn("sid", got[0])
            # Later ones whole or compact ([sid, dpos, dts, patch, adds]): seq is an increment.
            seqs = [2]
            for m in got[1:]:
                seqs.append(m["data"]["seq"] if type(m) is dict else seqs[-1] + m[4]["seq"])
            self.assertEqual(seqs, keep)
        for query, code in (("filter=" + quote('{"seq":{"like":1}}'), "bad_filter"),
                            ("max_rate=0", "bad_max_rate"), ("delta=2", "bad_delta")):
            with self.assertRaises(InvalidStatus) as caught:
                connect(node.url(f"/ws?channels={ALL}&{query}"), open_timeout=10)
            response = caught.exception.response
            self.assertEqual((response.status_code, json.loads(response.body)["code"]),
                             (400, code), query)


class SlowStreamTests(SseNodeCase):
    shards = 1

    def test_disconnect_policy_closes_a_stream_that_stops_reading(self):
        """
        Under the disconnect policy a stream whose client stops reading is
        closed once over outbound.max_buffer_bytes for the grace, with a
        close event 4008 at the end of what it still gets, and counted.
        """
        node = self.node(**{"outbound.policy": {"default": "disconnect"},
                            "outbound.max_buffer_bytes": 8192, "kafka.max_record_bytes": 8192,
                            "outbound.kernel_unsent_bytes": 4096,
                            "outbound.disconnect_grace": 0.5})
        s = self.stream(node, {"channels": ALL}, rcvbuf=4096)
        s.next()
        for _ in range(10):
            self.produce(50, pad=2000)
            if node_metric(node, "odinws_slow_disconnects_total") >= 1:
                break
        wait_for(lambda: node_metric(node, "odinws_slow_disconnects_total") >= 1, 30, 0.3,
                 "a slow disconnect")
        last = None
        while True:
            try:
                last = s.next(10)
            except EOFError:
                break
        self.assertEqual((last.event, last.json()["code"]), ("close", 4008))


class ShardCrashTests(SseNodeCase):
    def test_last_event_id_after_sigkill_recovers_every_missed_event_once(self):
        """
        SIGKILL of the shard holding the stream; events keep coming; the
        client reconnects as EventSource does (same URL, Last-Event-ID = the
        last id it saw) to whichever shard takes it and gets recovered: true,
        every event of the outage once and in order, then live ones.
        """
        node = self.node()
        got: dict[int, list[int]] = {}
        s = self.stream(node, {"channels": ALL})
        s.next()
        self.produce(2 * self.partitions)                  # every partition has a log
        self.read(s, got, self.seq)
        self.produce(10)
        self.read(s, got, self.seq)
        last_id = s.parser.last_id
        holder = [h for h in node.health()[1]["shards"] if h["connections"] == 1]
        self.assertEqual(len(holder), 1)
        os.kill(holder[0]["pid"], signal.SIGKILL)
        with self.assertRaises(EOFError):
            while True:
                s.next(10)
        self.produce(30)                                   # during the outage
        again = self.stream(node, {"channels": ALL}, (f"Last-Event-ID: {last_id}",))
        ack = again.next()
        self.assertEqual(ack.event, "subscribed")
        self.assertTrue(ack.json()["recovered"], ack.data)
        self.produce(10)                                   # live after recovery
        self.read(again, got, self.seq)
        self.assertEqual(got, self.produced)
