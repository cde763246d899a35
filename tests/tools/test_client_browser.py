"""
The JavaScript client (C{clients/js/odinws.js}, served by the node at
C{/odinws.js}) in a real browser: headless Debian Chromium driven by
C{tests/browser/client.test.mjs} against a real C{twistd odinws} node and the
test broker, with events produced the whole time.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid

from prometheus_client.parser import text_string_to_metric_families
from twisted.python import log
from twisted.trial import unittest

from tests.helpers.broker import KIND as BROKER_KIND
from tests.helpers.broker import fast_kafka, shared_broker
from tests.helpers.browser import BrowserScript, require_browser
from tests.helpers.node import Node, http_get

SECRET = "browser-secret-of-at-least-32-bytes!"


class ClientBrowserCase(unittest.TestCase):
    shards = 1

    def settings(self) -> dict:
        return {}

    def setUp(self):
        self.node_exe = require_browser()
        self.broker = shared_broker()
        self.topic = f"js-{uuid.uuid4().hex[:8]}"
        self.broker.create_topics([self.topic], partitions=2)
        self.workdir = os.path.abspath(self.mktemp())
        os.makedirs(self.workdir)
        settings = fast_kafka(BROKER_KIND)
        settings.update({"kafka.topics": {self.topic: "trade"}, "kafka.event_type_field": "kind",
                         "guard.cpu_threshold": 0, "guard.memory_threshold": 0})
        settings.update(self.settings())
        self.node = Node(self.workdir, self.broker.bootstrap, shards=self.shards,
                         settings=settings)
        self.addCleanup(self.node.stop)
        self.node.start()
        # The group has settled before a shard is killed (these test the
        # client library, not a kill during the group's first rebalance).
        self.node.wait_spread()
        self._produce()

    # Rounds to produce, then stop (None: until the test ends).
    rounds: int | None = None

    def _produce(self) -> None:
        """
        Trades and prices of three tokens, every 50 ms, until the test ends
        (or for C{rounds} rounds). C{seq} counts all events, C{n} each
        channel's (1, 2, 3, ...: a gap or a repeat shows in the browser).
        """
        stop = threading.Event()
        self.produced = threading.Event()

        def run():
            seq = 0
            rounds = 0
            while not stop.wait(0.05) and rounds != self.rounds:
                rounds += 1
                for token in ("ABC", "XYZ", "QRS"):
                    for kind in ("trade", "price"):
                        seq += 1
                        self.broker.produce(self.topic, token.encode(), json.dumps(
                            {"kind": kind, "seq": seq, "n": rounds}).encode())
                if rounds == self.rounds:
                    self.broker.flush()
                    self.produced.set()
            self.broker.flush()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        self.addCleanup(thread.join, 30)
        self.addCleanup(stop.set)

    def script(self, *args: str) -> BrowserScript:
        script = BrowserScript(self.node_exe, "client.test.mjs", *args)
        self.addCleanup(script.kill)
        return script

    def assertPassed(self, script: BrowserScript, timeout: float = 240) -> None:
        status = script.finish(timeout)
        output = script.output()
        log.msg(f"browser check ({status}):\n{output}")   # in _trial_temp/test.log
        self.assertEqual(status, 0, f"browser check failed:\n{output}\n"
                                    f"odinws log tail:\n{self.node.tail()}")




class ReconnectTests(ClientBrowserCase):
    shards = 2

    def test_reconnects_after_its_shard_is_killed_and_recovers(self):
        """
        The library loads cross-origin from /odinws.js, subscribes with a
        wildcard token and a wildcard event type and hands each event to every
        matching subscription; when the shard holding its connection is
        SIGKILLed (the parent restarts it) while events keep coming, it sees
        1006, reconnects on its own, subscribes again with the positions it
        saw, and gets every event it missed, in order and exactly once (each
        channel's n consecutive in each subscription), then live events.
        """
        script = self.script("reconnect", f"http://127.0.0.1:{self.node.port}")
        script.wait_line("READY", 120)
        victim = self.node.kill_holder()
        self.assertPassed(script)
        shards = self.node.health()[1]["shards"]
        self.assertNotIn(victim, [s["pid"] for s in shards])



class CompressionTests(ClientBrowserCase):
    def settings(self):
        return {"outbound.compression_min_bytes": 0}

    def test_compressed_events_reach_the_library(self):
        """
        Chromium negotiates permessage-deflate by itself (server_no_context_takeover
        answered), the node sends it compressed event frames, and the library
        hands every event to its subscriptions whole, in order and once.
        """
        script = self.script("deflate", f"http://127.0.0.1:{self.node.port}")
        self.assertPassed(script)
        _, _, text = http_get(self.node.port, "/metrics")
        wire = plain = 0.0
        for family in text_string_to_metric_families(text.decode()):
            for s in family.samples:
                if s.name == "odinws_outbound_deflate_bytes_total":
                    if s.labels["stage"] == "wire":
                        wire += s.value
                    else:
                        plain += s.value
        self.assertGreater(wire, 0)
        self.assertLess(wire, plain)


class SnapshotTests(ClientBrowserCase):
    rounds = 20

    def test_snapshot_shows_the_current_price_at_once(self):
        """
        With the producer stopped after its 20th price per token, a
        subscription with snapshot: true (wildcard and exact) gets the latest
        price of every matching channel at once, marked snapshot: nothing
        live could bring it.
        """
        self.assertTrue(self.produced.wait(60), "the producer did not finish")
        script = self.script("snapshot", f"http://127.0.0.1:{self.node.port}", str(self.rounds))
        self.assertPassed(script)


class DeltaTests(ClientBrowserCase):
    def test_deltas_applied_in_the_browser(self):
        """
        With delta: true the node sends compact deltas, with delta:
        "merge-patch" merge-patch ones (30 or more of each seen on the
        page's sockets), and the library hands each subscription the same
        events (data, ts, pos), event for event, as a plain subscription
        gets whole.
        """
        script = self.script("delta", f"http://127.0.0.1:{self.node.port}")
        self.assertPassed(script)


class GapTests(ClientBrowserCase):
    rounds = 0      # this test produces its own events
    #: The page's script mode (sse-gap: with WebSocket blocked).
    mode = "gap"

    def settings(self):
        return {"outbound.max_event_age": 10.0}

    def test_recovers_from_a_gap_notice_by_itself(self):
        """
        Events older than outbound.max_event_age are not sent live; the node
        sends a gap notice (stale) naming their stream and the position
        before them, and the library, by itself, resubscribes from it, gets
        them replayed (recovered: true) and hands every event over in order
        and once: 20 stale ones of one channel between fresh ones of another
        on the same partition.
        """
        script = self.script(self.mode, f"http://127.0.0.1:{self.node.port}")
        script.wait_line("READY", 120)
        now = int(time.time() * 1000)

        def trade(token: str, n: int, ts: int) -> None:
            self.broker.produce(self.topic, token.encode(),
                                json.dumps({"kind": "trade", "seq": n, "n": n}).encode(),
                                timestamp_ms=ts, partition=0)
        for n in (1, 2, 3):
            trade("NEW", n, now)
        self.broker.flush()
        for n in range(1, 21):
            trade("OLD", n, now - 60_000)
        for n in (4, 5, 6):
            trade("NEW", n, now)
        self.broker.flush()
        self.assertPassed(script)


class SseGapTests(GapTests):
    mode = "sse-gap"

    def test_recovers_from_a_gap_notice_by_itself(self):
        """
        As over WebSocket, with the page's WebSocket blocked: over
        Server-Sent Events the stale gap makes the library open a new
        stream from the gap's positions by itself, which replays the 20
        stale events (recovered), every event in order and once.
        """
        super().test_recovers_from_a_gap_notice_by_itself()


class UndecodableTests(ClientBrowserCase):
    rounds = 0      # this test produces its own events

    def settings(self):
        return {"kafka.event_type_field": ""}   # the channel is known without the value

    def test_undecodable_record_is_told_in_place_not_recovered(self):
        """
        A record the node cannot decode between two good ones of a channel:
        the library hands the subscription its "gap" (undecodable) between
        the two events and does not try to recover it (no loop, no
        "recovered" answer).
        """
        script = self.script("undecodable", f"http://127.0.0.1:{self.node.port}")
        script.wait_line("READY", 120)
        for value in (b'{"seq": 1, "n": 1}', b'{"seq": 2, "n"', b'{"seq": 3, "n": 2}'):
            self.broker.produce(self.topic, b"UND", value, partition=0)
        self.broker.flush()
        self.assertPassed(script)


class SseFallbackTests(ClientBrowserCase):
    shards = 2

    def test_falls_back_to_sse_when_websocket_is_blocked_and_recovers_there(self):
        """
        The page's WebSocket never opens (a proxy refusing upgrades): the
        library falls back to Server-Sent Events, says so in a "fallback"
        event (from, to, the close code), gets a snapshot then live
        events, and after the shard holding the stream is SIGKILLed it
        reconnects over SSE and recovers every missed event, in order, once;
        a subscription added then opens a new stream without a gap for the
        others.
        """
        script = self.script("sse", f"http://127.0.0.1:{self.node.port}")
        script.wait_line("READY", 120)
        self.node.kill_holder()
        self.assertPassed(script)



class TokenTests(ClientBrowserCase):
    def settings(self):
        secret_path = os.path.join(self.workdir, "jwt.secret")
        with open(secret_path, "w") as f:
            f.write(SECRET)
        return {"auth.mode": "jwt", "auth.secret_file": secret_path, "auth.leeway": 0}

    def test_refresh_and_4001(self):
        """
        With JWT auth: the library connects with a 6 s token in the bearer
        subprotocol and refreshes it through getToken before exp, so the
        connection outlives it; a refresh the server refuses is reported
        (forbidden), the server closes with 4001 at exp, and the library gets
        a new token from getToken, reconnects with it and receives events.
        """
        script = self.script("token", f"http://127.0.0.1:{self.node.port}", SECRET)
        self.assertPassed(script)
