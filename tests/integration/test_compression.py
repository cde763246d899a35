"""
permessage-deflate end to end: the real broker, a real C{twistd odinws}
node (both send loops), and C{websockets} clients with and without
compression on the same channel, a client whose offer the node cannot
honour, and a compressed message that inflates past the limit.
"""

from __future__ import annotations

import json

from prometheus_client.parser import text_string_to_metric_families
from websockets.exceptions import ConnectionClosed
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory

from tests.helpers.node import Client, http_get, wait_for
from tests.integration.test_integration import NodeTestCase


def metric(port: int, name: str, **labels: str) -> float:
    """The sum of C{name}'s samples with C{labels} in the node's /metrics."""
    text = http_get(port, "/metrics")[2].decode()
    total = 0.0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


class CompressionTests(NodeTestCase):
    """Two shards, so relayed events are compressed by the shard that delivers them too."""

    shards = 2
    partitions = 2

    def produce_prices(self, count: int) -> list[dict]:
        # Price updates as the simulator writes them: well over the threshold.
        out = []
        for i in range(count):
            out.append(self.produce("TOK", "price", i))
        self.broker.flush()
        return out

    def produce(self, token: str, kind: str, seq, partition=None) -> dict:
        value = {"kind": kind, "seq": seq, "price": 1.5 + seq, "priceUsd": 0.25 * seq,
                 "marketCap": 1_000_000 + seq, "volume24h": 5_000 + seq,
                 "source": "integration-test-price-feed"}
        self.broker.produce(self.topic, token.encode(), json.dumps(value).encode(),
                            partition=partition)
        return value

    def test_compressedAndPlainClientsGetTheSameEvents(self):
        """
        A client with compression="deflate" negotiates it (the node answers
        server_no_context_takeover) and one without does not; on the same
        channel both get identical events, and the node counts frames
        compressed and fewer bytes after compression than before.
        """
        deflating = [Client(self.node.url(), compression="deflate") for _ in range(3)]
        plain = Client(self.node.url(), compression=None)
        for c in (*deflating, plain):
            self.addCleanup(c.close)
            c.subscribe("odin.token.TOK.price")
        [ext] = deflating[0].ws.protocol.extensions
        self.assertEqual(ext.name, "permessage-deflate")
        self.assertTrue(ext.remote_no_context_takeover)
        self.assertEqual(plain.ws.protocol.extensions, [])
        produced = self.produce_prices(30)
        got = [c.collect(30) for c in (*deflating, plain)]
        self.assertEqual([e["data"] for e in got[-1]], produced)
        for events in got[:-1]:
            self.assertEqual(events, got[-1])
        port = self.node.port
        self.assertGreaterEqual(metric(port, "odinws_outbound_deflated_frames_total"), 30)
        plain_bytes = metric(port, "odinws_outbound_deflate_bytes_total", stage="plain")
        wire = metric(port, "odinws_outbound_deflate_bytes_total", stage="wire")
        self.assertGreater(plain_bytes, wire)
        self.assertEqual(metric(port, "odinws_deflate_offers_total", result="accepted"), 3)

    def test_offerItCannotHonourDeclined(self):
        """
        A client asking for an 8-bit server window is declined, not refused:
        it connects without compression and gets its events.
        """
        factory = ClientPerMessageDeflateFactory(server_max_window_bits=8)
        c = Client(self.node.url(), extensions=[factory], compression=None)
        self.addCleanup(c.close)
        self.assertEqual(c.ws.protocol.extensions, [])
        c.subscribe("odin.token.TOK.price")
        produced = self.produce_prices(3)
        self.assertEqual([e["data"] for e in c.collect(3)], produced)
        self.assertEqual(metric(self.node.port, "odinws_deflate_offers_total", result="invalid"),
                         1)

    def test_inflateBombClosed1009(self):
        """
        A compressed client message that inflates past limits.max_message_bytes
        (a few KB on the wire) is closed with 1009; a neighbour keeps its feed.
        """
        neighbour = self.client(compression="deflate")
        neighbour.subscribe("odin.token.TOK.price")
        bomber = Client(self.node.url(), compression="deflate")
        self.addCleanup(bomber.close)
        bomber.ws.send(json.dumps({"type": "ping", "pad": " " * 5_000_000}))

        def closed():
            try:
                bomber.ws.recv(0.2)
            except ConnectionClosed:
                return True
            except TimeoutError:
                return False
            return False
        wait_for(closed, 20, 0, "the bomber to be closed")
        self.assertEqual(bomber.ws.protocol.close_rcvd.code, 1009)
        produced = self.produce_prices(2)
        self.assertEqual([e["data"] for e in neighbour.collect(2)], produced)


class PythonLoopCompressionTests(CompressionTests):
    """L{CompressionTests} with the pure-Python send loop (outbound.native: off)."""

    extra = {"outbound.native": "off"}
