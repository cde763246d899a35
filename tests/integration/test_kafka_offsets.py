"""
Offsets with holes on Apache Kafka, end to end (issue 21): a real broker,
real C{twistd odinws} nodes and C{websockets} clients.

Kafka offsets are not contiguous: a transaction's commit or abort marker
takes an offset no consumer ever sees, records of aborted transactions are
skipped by a read_committed consumer, and compaction removes superseded
records from the middle of a log. Whatever the holes, clients get exactly
the records a read_committed reader of the log gets, once, in order; a
position just before a hole recovers exactly the records after it; a
snapshot is the latest of those records per channel; and all of it holds
again after a restart, when the history is read back from Kafka (the
warm-up) instead of built from live delivery.
"""

from __future__ import annotations

import json
import time
import uuid

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource

from odin_ws.common.logs import silenced
from tests.helpers.broker import apache_kafka
from tests.helpers.node import Client, wait_for
from tests.helpers.topics import TopicNodeCase

# librdkafka's reconnect lines when the test broker stops at exit.
_quiet = silenced("tests.kafka_offsets.librdkafka")

#: Tokens go to partition C{token % partitions}, as keyed records would.
TOKENS = 3


def offset(pos: str) -> int:
    return int(pos.rpartition(":")[2])


def partition(pos: str) -> int:
    return int(pos.split(":")[1])


class GapsCase(TopicNodeCase):
    """
    A topic of its own on Apache Kafka whatever this run's broker (Tansu 0.6
    writes no transaction markers and its consumers get no transactional
    records; compaction is Kafka's log cleaner), a node on it, and what a
    client sees.
    """

    prefix = "gaps"
    partitions = 1
    shards = 1
    broker_of = staticmethod(apache_kafka)
    #: Topic settings set after its creation.
    topic_config: dict[str, str] = {}

    def setUp(self):
        super().setUp()
        if self.topic_config:
            self.configure(self.topic_config)
        self.live = self.node(start=False)

    def configure(self, config: dict[str, str]) -> None:
        resource = ConfigResource("topic", self.topic, incremental_configs=[
            ConfigEntry(k, v, incremental_operation=AlterConfigOpType.SET)
            for k, v in config.items()])
        for future in self.broker.admin.incremental_alter_configs([resource]).values():
            future.result(30)

    def restart(self) -> None:
        """
        Stop the node and start it again (same node id: same group, its
        committed offsets); wait until every shard has read its history back.
        """
        self.live.stop()
        self.live.start()

        def warmed():
            shards = self.live.health()[1]["shards"]
            return all((s.get("warmup") or {}).get("state") == "done" for s in shards)
        wait_for(warmed, 60, 0.2, "the history read back")

    def subscribe(self, client: Client, **extra) -> dict:
        msg = {"type": "subscribe", "channels": ["odin.token.*.*"], "id": "s", **extra}
        reply = client.request(msg)
        self.assertEqual(reply["type"], "subscribed", reply)
        return reply

    def events(self, client: Client, count: int) -> list[dict]:
        """The next C{count} events (those request() kept first)."""
        return client.collect(count, 60)[:count]

    def log(self) -> dict[int, list[tuple[int, int]]]:
        """
        What a read_committed reader of the whole topic gets, per partition:
        C{(offset, seq)} in offset order.
        """
        consumer = Consumer({"bootstrap.servers": self.broker.bootstrap,
                             "group.id": f"reader-{uuid.uuid4().hex[:8]}",
                             "isolation.level": "read_committed",
                             "enable.partition.eof": True, "enable.auto.commit": False})
        try:
            consumer.assign([TopicPartition(self.topic, p, 0) for p in range(self.partitions)])
            out: dict[int, list[tuple[int, int]]] = {p: [] for p in range(self.partitions)}
            ended: set[int] = set()
            deadline = time.monotonic() + 30
            while len(ended) < self.partitions:
                self.assertLess(time.monotonic(), deadline, "reading the topic back")
                m = consumer.poll(0.5)
                if m is None:
                    continue
                p, off, value = m.partition(), m.offset(), m.value()
                assert p is not None and off is not None
                if m.error() is not None:
                    ended.add(p)
                    continue
                out[p].append((off, json.loads(value or b"")["seq"]))
            return out
        finally:
            consumer.close()

    def assertRecovers(self, since: list[str], log: dict[int, list[tuple[int, int]]]) -> None:
        """
        A fresh client subscribing with C{since} recovers, and is replayed
        exactly the log's records after those positions, in order.
        """
        client = self.connect(self.live)
        reply = self.subscribe(client, since=since)
        self.assertTrue(reply["recovered"], reply)
        want = {partition(p): [seq for off, seq in log[partition(p)] if off > offset(p)]
                for p in since}
        self.assertEqual(reply["replayed"], sum(map(len, want.values())), reply)
        got: dict[int, list[int]] = {p: [] for p in want}
        for e in self.events(client, reply["replayed"]):
            got[partition(e["pos"])].append(e["data"]["seq"])
        self.assertEqual(got, want)
        # The ack's positions are the offsets of the last records, not of a marker after them.
        tops = {partition(p): offset(p) for p in reply["positions"]}
        self.assertEqual(tops, {p: records[-1][0] for p, records in log.items() if records})

    def assertSnapshot(self, log: dict[int, list[tuple[int, int]]],
                       token_of: dict[int, int]) -> None:
        """A snapshot of every channel: the last record of each token in the log."""
        latest: dict[str, int] = {}
        for records in log.values():
            for _, seq in records:
                latest[f"odin.token.T{token_of[seq]}.trade"] = seq
        client = self.connect(self.live)
        reply = self.subscribe(client, snapshot=True)
        got = {e["channel"]: e["data"]["seq"] for e in self.events(client, reply["snapshot"])}
        self.assertEqual(got, latest)


class TransactionTests(GapsCase):
    """Committed and aborted transactions interleaved, on two partitions and two shards."""

    partitions = 2
    shards = 2
    #: Committed (True) or aborted (False), in order; each writes every token once.
    plan = (True, False, True, False, True, False, True)

    def test_abortedNeverDeliveredPositionsExact(self):
        """
        A client gets exactly the events of the committed transactions, in
        order per partition, none of an aborted one, also through the hub
        (the other shard's partition); the offsets show the markers' holes;
        a fresh client recovering from the position of the last event before
        a marker gets exactly the committed events after it, and the ack's
        positions are the last events' offsets; a snapshot holds the latest
        committed event of each channel (the last transaction writing the
        channel was aborted). After a restart of the node (history read back
        from Kafka) recovery and snapshot are as exact.
        """
        self.live.start()
        client = self.connect(self.live)
        self.subscribe(client, since=[])
        producer = Producer({"bootstrap.servers": self.broker.bootstrap,
                             "transactional.id": f"odinws-test-{uuid.uuid4().hex[:8]}",
                             "linger.ms": 0, "logger": _quiet})
        producer.init_transactions(30)
        token_of: dict[int, int] = {}
        committed: dict[int, list[int]] = {p: [] for p in range(self.partitions)}
        seq = 0
        for commit in self.plan:
            producer.begin_transaction()
            for token in range(TOKENS):
                p = token % self.partitions
                producer.produce(self.topic, key=b"T%d" % token, partition=p,
                                 value=json.dumps({"seq": seq}).encode())
                token_of[seq] = token
                if commit:
                    committed[p].append(seq)
                seq += 1
            # In the log before the transaction ends: abort_transaction
            # drops what librdkafka has not sent yet.
            self.assertEqual(producer.flush(30), 0)
            if commit:
                producer.commit_transaction(30)
            else:
                producer.abort_transaction(30)
        # The last transaction writing each channel is an aborted one: one more
        # committed record on each partition, of a channel of its own, shows
        # the aborted ones were passed over.
        producer.begin_transaction()
        for p in range(self.partitions):
            producer.produce(self.topic, key=b"T%d" % (TOKENS + p), partition=p,
                             value=json.dumps({"seq": seq}).encode())
            token_of[seq] = TOKENS + p
            committed[p].append(seq)
            seq += 1
        producer.commit_transaction(30)

        total = sum(map(len, committed.values()))
        got: dict[int, list[int]] = {p: [] for p in range(self.partitions)}
        positions: dict[int, list[str]] = {p: [] for p in range(self.partitions)}
        for e in self.events(client, total):
            got[partition(e["pos"])].append(e["data"]["seq"])
            positions[partition(e["pos"])].append(e["pos"])
        self.assertEqual(got, committed)
        log = self.log()
        self.assertEqual({p: [s for _, s in records] for p, records in log.items()}, committed)
        # The first transaction's last event on each partition: a commit
        # marker follows it, then the aborted transaction, its marker, ...
        per_txn = [sum(1 for t in range(TOKENS) if t % self.partitions == p)
                   for p in range(self.partitions)]
        before_marker = [positions[p][per_txn[p] - 1] for p in range(self.partitions)]
        for pos in before_marker:
            records = [off for off, _ in log[partition(pos)]]
            following = records[records.index(offset(pos)) + 1]
            self.assertGreater(following - offset(pos), 1, "no hole after the position")
        self.assertRecovers(before_marker, log)
        self.assertSnapshot(log, token_of)

        self.restart()
        self.assertRecovers(before_marker, log)
        self.assertSnapshot(log, token_of)
        # Live delivery goes on from the history read back, across the marker
        # that ended the last transaction before the restart.
        client = self.connect(self.live)
        self.subscribe(client)
        producer.begin_transaction()
        for p in range(self.partitions):
            producer.produce(self.topic, key=b"T%d" % p, partition=p,
                             value=json.dumps({"seq": seq + p}).encode())
            token_of[seq + p] = p
        producer.commit_transaction(30)
        got = {partition(e["pos"]): e["data"]["seq"] for e in self.events(client, 2)}
        self.assertEqual(got, {p: seq + p for p in range(self.partitions)})
        log = self.log()
        self.assertRecovers(before_marker, log)
        self.assertSnapshot(log, token_of)


class CompactionTests(GapsCase):
    """A compacted topic whose log the cleaner has already thinned out."""

    topic_config = {"cleanup.policy": "compact", "segment.ms": "100",
                    "min.cleanable.dirty.ratio": "0.01", "min.compaction.lag.ms": "0"}
    #: Tokens of the records, in order: 0, 2 and 4 are written again later,
    #: so their first records go and leave holes between the others.
    sequence = (0, 1, 0, 2, 3, 2, 4, 5, 4)

    def compact(self, client: Client,
                token_of: dict[int, int]) -> dict[int, list[tuple[int, int]]]:
        """
        Write the records and wait until C{client} has them all (the cleaner
        must not remove one before the node read it: then no client could
        get it); then write a record of a token of its own every so often (a
        segment rolls only on a write after segment.ms) until the cleaner
        has removed some; then stop compaction (cleanup.policy delete) so
        the log no longer changes under the test.
        """
        producer = Producer({"bootstrap.servers": self.broker.bootstrap, "linger.ms": 0,
                             "logger": _quiet})
        seq = 0

        def write(token: int) -> None:
            nonlocal seq
            producer.produce(self.topic, key=b"T%d" % token, partition=0,
                             value=json.dumps({"seq": seq}).encode())
            token_of[seq] = token
            seq += 1
            self.assertEqual(producer.flush(30), 0)

        for token in self.sequence:
            write(token)
        self.events(client, len(self.sequence))

        def compacted():
            log = self.log()[0]
            if len(log) < seq:
                return log
            write(100 + seq)    # never superseded: only the tokens' holes
            return None
        wait_for(compacted, 60, 0.2, "the log compacted")
        self.configure({"cleanup.policy": "delete"})
        return self.log()

    def test_holesRecoveryAndSnapshotExact(self):
        """
        A client gets every record live, in order; after a restart (the history read back from
        the compacted log, offsets with holes where superseded records were)
        a fresh client recovering from the position of the last record
        before a hole gets exactly the records left after it, the ack's
        position is the last record's offset, and a snapshot holds each
        channel's latest record.
        """
        self.live.start()
        client = self.connect(self.live)
        self.subscribe(client, since=[])
        token_of: dict[int, int] = {}
        log = self.compact(client, token_of)
        offsets = [off for off, _ in log[0]]
        holes = [off for off, nxt in zip(offsets, offsets[1:]) if nxt - off > 1]
        self.assertTrue(holes, f"no hole between the records left: {offsets}")
        events = self.events(client, len(token_of))
        self.assertEqual([e["data"]["seq"] for e in events], sorted(token_of))
        position = next(e["pos"] for e in events if offset(e["pos"]) == holes[0])

        self.restart()
        self.assertRecovers([position], log)
        self.assertSnapshot(log, token_of)
