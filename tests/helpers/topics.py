"""
A base case for end-to-end tests that need a real node on a topic of their
own: the topic (fresh per test, so tests never see each other's records),
the node factory, a producer of numbered events and a WebSocket connect that
retries while the node answers 503.
"""

from __future__ import annotations

import json
import os
import uuid

from twisted.trial import unittest
from websockets.exceptions import InvalidStatus

from tests.helpers.broker import fast_kafka, new_broker, shared_broker
from tests.helpers.node import Client, Node, wait_for


def stream(position: str) -> str:
    """A position's stream: everything before its last C{:} (docs/protocol.md)."""
    return position.rpartition(":")[0]


class TopicNodeCase(unittest.TestCase):
    """
    Nodes on a fresh topic of C{partitions} partitions. C{produce} writes
    events C{{"seq": n}} for C{tokens} tokens (C{T0}..C{T2}), each token always on
    the same partition as keyed records are, and remembers per partition
    which seqs went there (C{produced}).
    """

    shards = 2
    partitions = 2
    prefix = "it"
    #: A broker of the test's own (it restarts it), not the process's shared one.
    own_broker = False
    #: That broker's class whatever this run's broker (None: this run's kind).
    broker_class: type | None = None
    #: Otherwise where the topic lives: this run's broker, or (C{apache_kafka})
    #: Apache Kafka whatever the run's broker, for a test of its behaviours.
    broker_of = staticmethod(shared_broker)
    #: Tokens C{produce} cycles through (token i on partition i % partitions).
    tokens = 3

    def setUp(self):
        self.workdir = os.path.abspath(self.mktemp())
        os.makedirs(self.workdir)
        if self.own_broker:
            self.broker = (self.broker_class(self.workdir) if self.broker_class
                           else new_broker(self.workdir))
            self.broker.start()
            self.addCleanup(self.broker.stop)
        else:
            self.broker = self.broker_of()
        self.topic = f"{self.prefix}-{uuid.uuid4().hex[:8]}"
        self.broker.create_topics([self.topic], partitions=self.partitions)
        self.seq = 0
        self.produced: dict[int, list[int]] = {}

    def node(self, start: bool = True, port: int | None = None, **extra) -> Node:
        settings = fast_kafka(self.broker.kind)
        # The tests reconnect at once; no placement hold while a shard is due back.
        settings.update({"kafka.topics": {self.topic: "trade"}, "listen.restart_hold": 0})
        settings.update(extra)
        node = Node(self.workdir, self.broker.bootstrap, shards=self.shards, settings=settings,
                    port=port)
        self.addCleanup(node.stop)
        return node.start() if start else node

    def produce(self, count: int, pad: int = 0, flush: bool = True) -> None:
        """
        C{count} more events; with C{flush} False they are only queued in
        the producer (which keeps retrying while the broker is down).
        """
        for _ in range(count):
            token = self.seq % self.tokens
            partition = token % self.partitions
            value: dict = {"seq": self.seq}
            if pad:
                value["pad"] = "x" * pad
            self.broker.produce(self.topic, b"T%d" % token, json.dumps(value).encode(),
                                partition=partition)
            self.produced.setdefault(partition, []).append(self.seq)
            self.seq += 1
        if flush:
            self.broker.flush()

    def connect(self, node: Node) -> Client:
        """A WebSocket client of C{node}, retried while it answers 503 (a shard due back)."""
        def attempt():
            try:
                return Client(node.url())
            except (InvalidStatus, OSError):
                return None
        client = wait_for(attempt, 30, 0.1, "a connection")
        self.addCleanup(client.close)
        return client

    def wait_consumed(self, node: Node) -> None:
        """
        Wait until C{node} has taken every event produced so far: the
        current positions (a subscribe with C{since: []}) reach each
        partition's last offset.
        """
        probe = self.connect(node)
        want = {p: len(seqs) - 1 for p, seqs in self.produced.items()}

        def caught_up():
            reply = probe.request({"type": "subscribe", "channels": ["odin.token.*.*"],
                                   "since": []})
            probe.request({"type": "unsubscribe", "channels": ["odin.token.*.*"]})
            got = {int(pos.split(":")[1]): int(pos.rpartition(":")[2])
                   for pos in reply.get("positions") or []}
            return all(got.get(p, -1) >= offset for p, offset in want.items())
        # A poll spends limits.recovery_cost + 1 message tokens (6 of the
        # default 10/s): polled faster, a long wait would run the probe into
        # rate_limited errors and then its strikes close.
        wait_for(caught_up, 30, 0.75, "the node to take every produced event")
        probe.close()
