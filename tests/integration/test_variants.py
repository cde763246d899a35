"""
Subscription options end to end (issue 25, parts 2-4): a real broker, a real
C{twistd odinws} node with two shards (so events also arrive relayed by the
hub), and C{websockets} clients: deltas rebuild exactly the data a plain
subscriber gets, max_rate 2 ends on the latest event, a filter delivers
exactly the matching events, and bad options get their error codes while
other clients go on unaffected.
"""

from __future__ import annotations

import json
import time
from typing import Any

from odinws_client.mergepatch import apply_merge_patch
from tests.helpers.node import Client, wait_for
from tests.helpers.topics import TopicNodeCase

CHANNEL = "odin.token.T0.trade"
PROBE = "odin.token.P.trade"


def rebuild(messages: list[dict[str, Any]]) -> list[Any]:
    """The data a client applying deltas sees, event after event."""
    last: dict[str, Any] = {}
    out = []
    for m in messages:
        data = apply_merge_patch(last[m["channel"]], m["delta"]) if "delta" in m else m["data"]
        last[m["channel"]] = data
        out.append(data)
    return out


class VariantNodeTests(TopicNodeCase):
    prefix = "var"
    partitions = 1
    tokens = 1

    def send(self, value: dict[str, Any], token: bytes = b"T0") -> None:
        self.broker.produce(self.topic, token, json.dumps(value).encode(), partition=0)

    def subscribed(self, client: Client, **options: Any) -> None:
        reply = client.request({"type": "subscribe", "channels": [CHANNEL], "id": "s", **options})
        self.assertEqual(reply["type"], "subscribed", reply)

    def primed(self, node: Any) -> None:
        """Probe events until the node delivers them: its consumer reads from here on."""
        probe = self.connect(node)
        probe.subscribe(PROBE)

        def arrived() -> bool:
            self.send({"probe": True}, b"P")
            self.broker.flush()
            try:
                return probe.recv(0.5).get("type") == "event"
            except TimeoutError:
                return False
        wait_for(arrived, 60, 0, "a probe event")
        probe.close()

    def events(self, client: Client, until: Any, timeout: float = 60) -> list[dict[str, Any]]:
        """Events of C{CHANNEL} the client gets until C{until(events)} holds."""
        got = [m for m in client.events if m.get("channel") == CHANNEL]
        client.events.clear()

        def done() -> bool:
            if until(got):
                return True
            try:
                msg = client.recv(0.5)
            except TimeoutError:
                return False
            if msg.get("type") == "event" and msg.get("channel") == CHANNEL:
                got.append(msg)
            return until(got)
        wait_for(done, timeout, 0, "the events")
        return got

    def test_deltas_rebuild_exactly_the_whole_events(self):
        """A delta subscriber rebuilds the same data, event for event, as a plain one."""
        node = self.node()
        plain, delta = self.connect(node), self.connect(node)
        self.subscribed(plain)
        self.subscribed(delta, delta=True)
        self.primed(node)
        values = []
        for n in range(60):
            value: dict[str, Any] = {"seq": n, "price": f"1.{n % 7}", "size": n % 5,
                                     "name": "a token name that does not change",
                                     "book": {"bid": f"0.{n % 3}", "ask": "2.0"}}
            if n % 10 == 3:
                del value["size"]           # a member removed
            if n % 17 == 5:
                value["note"] = None        # a null member: whole
            values.append(value)
            self.send(value)
        self.broker.flush()
        whole = self.events(plain, lambda got: len(got) >= 60)
        deltas = self.events(delta, lambda got: len(got) >= 60)
        self.assertEqual([m["data"] for m in whole], values)
        self.assertEqual(rebuild(deltas), values)
        self.assertEqual([m["pos"] for m in deltas], [m["pos"] for m in whole])
        self.assertGreater(sum("delta" in m for m in deltas), 30)
        self.assertLess(sum(len(json.dumps(m)) for m in deltas),
                        sum(len(json.dumps(m)) for m in whole))

    def test_max_rate_ends_on_the_latest_event(self):
        """
        max_rate 2 on a channel fed fast: far fewer events than produced,
        at most about 2 per second of the stream, in order, the last one
        the latest; a plain subscriber of the channel still gets every one.
        """
        node = self.node()
        plain, capped = self.connect(node), self.connect(node)
        self.subscribed(plain)
        self.subscribed(capped, max_rate=2)
        self.primed(node)
        start = time.monotonic()
        count = 100
        for n in range(count):
            self.send({"seq": n})
            self.broker.flush()
            # Paces the feed at about 50 events a second (the load, not a wait).
            time.sleep(0.02)
        got = self.events(capped, lambda got: bool(got) and got[-1]["data"]["seq"] == count - 1)
        span = time.monotonic() - start
        seqs = [m["data"]["seq"] for m in got]
        self.assertEqual(seqs, sorted(set(seqs)))
        self.assertEqual(seqs[-1], count - 1)
        self.assertLessEqual(len(seqs), 2 * span + 2)
        self.assertLess(len(seqs), count // 3)
        self.assertEqual(len(self.events(plain, lambda got: len(got) >= count)), count)

    def test_filter_delivers_exactly_the_matching_events(self):
        """A filter passing one event in ten delivers exactly those; plain gets all."""
        node = self.node()
        plain, filtered, also = self.connect(node), self.connect(node), self.connect(node)
        self.subscribed(plain)
        self.subscribed(filtered, filter={"size": {"gte": 100}})
        self.subscribed(also, filter={"size": {"gte": 100}}, delta=True)
        self.primed(node)
        sizes = [(n * 37) % 100 + (100 if n % 10 == 9 else 0) for n in range(80)]
        for n, size in enumerate(sizes):
            self.send({"seq": n, "size": size})
        self.broker.flush()
        want = [{"seq": n, "size": s} for n, s in enumerate(sizes) if s >= 100]
        self.assertEqual(len(self.events(plain, lambda got: len(got) >= 80)), 80)
        # The last event produced matches: once it is in, nothing else is due.
        got = self.events(filtered, lambda got: bool(got) and got[-1]["data"]["seq"] == 79)
        self.assertEqual([m["data"] for m in got], want)
        got = self.events(also, lambda got: len(rebuild(got)) == len(want))
        self.assertEqual(rebuild(got), want)

    def test_bad_options_get_their_error_others_unaffected(self):
        """Each bad option is refused with its code; the same client and others go on."""
        node = self.node()
        other, bad = self.connect(node), self.connect(node)
        self.subscribed(other, delta=True)
        cases = [({"delta": "fossil"}, "bad_delta"), ({"max_rate": 0}, "bad_max_rate"),
                 ({"max_rate": 1e9}, "bad_max_rate"),
                 ({"filter": {"size": {"like": 3}}}, "bad_filter"),
                 ({"filter": {"or": [{f"f{i}": "x" * 20} for i in range(60)]}},
                  "filter_too_large"),
                 ({"filter": "size > 3"}, "bad_filter")]
        for options, code in cases:
            reply = bad.request({"type": "subscribe", "channels": [CHANNEL], "id": 7,
                                 **options})
            self.assertEqual((reply["type"], reply.get("code"), reply.get("id")),
                             ("error", code, 7))
        self.subscribed(bad, max_rate=50)
        reply = bad.request({"type": "subscribe", "channels": ["odin.token.*.trade"],
                             "delta": True})
        self.assertEqual(reply.get("code"), "options_conflict")
        self.primed(node)
        self.send({"seq": 1})
        self.broker.flush()
        self.assertEqual(self.events(other, lambda got: len(got) >= 1)[0]["data"], {"seq": 1})
        self.assertEqual(self.events(bad, lambda got: len(got) >= 1)[0]["data"], {"seq": 1})
