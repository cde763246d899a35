"""
The admin listener of a real node: on by default, on loopback, so the
shipped configuration has a metrics endpoint a Prometheus on the same host
scrapes without edits; and with a door of its own, so a flood of partial
heads on the public port does not shut /health and /metrics there.
"""

from __future__ import annotations

import json
import os
import socket
import uuid

from twisted.trial import unittest

from odin_ws.common import config
from tests.helpers.broker import FAST_KAFKA, free_port, shared_broker
from tests.helpers.node import ROOT, Node, http_get, wait_for

SHIPPED = os.path.join(ROOT, "etc", "odinws.yaml")


class AdminListenerTests(unittest.TestCase):

    def setUp(self):
        self.broker = shared_broker()
        self.topic = f"admin-{uuid.uuid4().hex[:8]}"
        self.broker.create_topics([self.topic])
        self.workdir = os.path.abspath(self.mktemp())
        os.makedirs(self.workdir)

    def test_shipped_config_serves_metrics_on_loopback(self):
        """
        With etc/odinws.yaml as shipped, the node has an admin listener on
        127.0.0.1 that answers /metrics (the node's exposition) and /health,
        while the public port keeps /metrics to itself (404); its log gives
        each shard line one timestamp, the parent's. Only the
        admin port's number is changed (the documented 3006 may be taken on
        a shared test host), the interface is the default's; the node's
        id, brokers and topic come from the environment, as on a host.
        """
        default = config.BY_KEY["listen.admin_port"].default
        self.assertEqual(default, "tcp:3006:interface=127.0.0.1")
        with open(SHIPPED) as f:
            self.assertIn("admin_port: tcp:3006:interface=127.0.0.1", f.read())
        admin = free_port()
        public = free_port()
        node = Node(self.workdir, self.broker.bootstrap, env={
            "ODINWS_LISTEN_PORT": f"tcp:{public}:interface=127.0.0.1",
            "ODINWS_LISTEN_ADMIN_PORT": default.replace(":3006:", f":{admin}:"),
            "ODINWS_KAFKA_BROKERS": self.broker.bootstrap,
            "ODINWS_KAFKA_TOPICS": json.dumps({self.topic: "trade"}),
            "ODINWS_NODE_ID": f"shipped{public}"})
        node.config_path = SHIPPED
        node.port = public
        self.addCleanup(node.stop)
        node.start()
        status, _, body = http_get(admin, "/metrics")
        self.assertEqual(status, 200)
        self.assertIn(b"\nodinws_ready 1.0\n", body)
        self.assertIn(b'odinws_connections{shard="0"}', body)
        status, _, body = http_get(admin, "/health")
        self.assertEqual((status, json.loads(body)["status"]), (200, "ok"))
        self.assertEqual(http_get(public, "/metrics")[0], 404)
        self.assertEqual(http_get(admin, "/ws")[0], 404)
        # The shipped text log: a shard's lines, relayed by the parent, carry
        # the parent's timestamp only.
        relayed = [line for line in node.tail(200_000).splitlines() if "shard 0: " in line]
        self.assertTrue(relayed)
        for line in relayed:
            self.assertRegex(line, r"^\d{4}-\d\d-\d\dT\S+ \[[^]]*\] shard 0: \[")

    def test_admin_port_answers_during_a_head_flood(self):
        """
        Partial request heads holding every one of listen.max_heads on the
        public port make the public listener stop accepting
        (odinws_accept_paused 1: a new client waits in the kernel's backlog,
        docs/operations.md "Reconnection storms"); /health and /metrics on
        the admin port are still answered, from its own door (issue 23's
        M1: the balancer's check would fail the node); and the waiting
        public client is answered once a held head leaves.
        """
        admin = free_port()
        node = Node(self.workdir, self.broker.bootstrap, settings={
            **FAST_KAFKA, "kafka.topics": {self.topic: "trade"},
            "listen.admin_port": f"tcp:{admin}:interface=127.0.0.1",
            "listen.max_heads": 4, "listen.head_timeout": 120.0})
        self.addCleanup(node.stop)
        node.start()
        held = []
        for _ in range(4):
            s = socket.create_connection(("127.0.0.1", node.port), timeout=10)
            self.addCleanup(s.close)
            s.sendall(b"GET /ws HTTP/1.1\r\nHost: x\r\n")
            held.append(s)

        def paused():
            status, _, body = http_get(admin, "/metrics")
            return status == 200 and any(
                line.startswith("odinws_accept_paused") and line.endswith(" 1.0")
                for line in body.decode().splitlines())
        wait_for(paused, 30, 0.1, "the public listener to pause with every head held")
        status, _, body = http_get(admin, "/health")
        self.assertEqual(status, 200, body)
        self.assertEqual(json.loads(body)["status"], "ok")
        waiting = socket.create_connection(("127.0.0.1", node.port), timeout=60)
        self.addCleanup(waiting.close)
        waiting.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        held[0].close()
        answer = b""
        while b"\r\n" not in answer:
            chunk = waiting.recv(4096)
            if not chunk:
                break
            answer += chunk
        self.assertTrue(answer.startswith(b"HTTP/1.1 200"), answer)
