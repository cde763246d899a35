"""
What the Kafka consumer thread of a shard does (L{ConsumerLoop}): poll,
map records to events, hand batches to the reactor, store the offsets of
the batches the reactor has taken, pause when too many are out. Its state
(L{odin_ws.shard.kafka.loopstate}) is touched by that thread only; it
reports to the L{KafkaIngest} that owns the consumer's status through that
class's small "consumer thread" API. Where partitions start and the group's
callbacks are the loop's other parts (L{odin_ws.shard.kafka.placement},
L{odin_ws.shard.kafka.membership}).
"""

from __future__ import annotations

import time
from collections import Counter

from confluent_kafka import KafkaError, KafkaException
from twisted.python.failure import Failure

from odin_ws.common import metrics
from odin_ws.common.events import Event, Partition
from odin_ws.common.prometheus_internals import Observer
from odin_ws.shard.history.holes import Hole
from odin_ws.shard.kafka.errors import describe_error
from odin_ws.shard.kafka.loopstate import PendingBatch
from odin_ws.shard.kafka.membership import GroupMembership

#: The broker's share of the delivery latency, observed once per batch.
_BROKER_LATENCY = Observer(metrics.BROKER_LATENCY)

# Seconds the thread waits at stop for batches already in the reactor, so
# their offsets are committed by close().
STOP_GRACE = 2.0


class ConsumerLoop(GroupMembership):
    """
    The consumer thread's loop (L{run}); built like its L{LoopState}.
    """

    def run(self) -> None:
        ingest = self.ingest
        try:
            self.subscribe()
            while not (self.stopping.is_set() or self.fatal.is_set()):
                self.poll_once()
            deadline = time.monotonic() + STOP_GRACE
            while self.in_flight and time.monotonic() < deadline:
                self.take_done(0.05)
        except Exception:
            # A bug here would otherwise end ingestion silently in a thread.
            ingest.thread_failed(Failure())
        finally:
            try:
                self.consumer.close()  # commits stored offsets, leaves the group
            except (KafkaException, RuntimeError) as e:
                ingest.log("warn", "Kafka consumer close: {error}", error=describe_error(e))

    def poll_once(self) -> None:
        self.take_done(0)
        if self.rejoin.is_set():
            self.rejoin.clear()
            self.rejoin_group()
        if self.epochs_due is not None and time.monotonic() >= self.epochs_due:
            changed = self.refresh_epochs()
            if changed is not None:
                self.reread_recreated({topic for topic, old in changed.items() if old})
                self.place_unplaced()
                self.store_positions()
        if self.in_flight < self.max_pending:
            self.blocked_since = None
            if self.paused:
                self.consumer.resume(self.consumer.assignment())
                self.paused = False
                self.ingest.pausing(False)
            self.handle(self.take())
            return
        now = time.monotonic()
        if self.blocked_since is None:
            self.blocked_since = now
        if not self.paused and now - self.blocked_since > self.pause_after:
            self.paused = self.repause = True
            self.ingest.pausing(True)
        if self.paused:
            if self.repause:  # after a rebalance, new partitions start unpaused
                self.consumer.pause(self.consumer.assignment())
                self.repause = False
            # Paused partitions return nothing; polling keeps the membership.
            self.handle(self.consumer.consume(self.poll_batch, 0))
        self.take_done(self.poll_timeout)

    def take(self) -> list:
        """
        The next records: wait for the first one only, then take whatever
        else is already fetched, up to poll_batch. (consume(n, t) would wait
        for n records or all of t: every event of a quiet stream would wait
        poll_timeout. Measured with Tansu, one record per 20 ms, produce to
        on_batch: median 166 ms before, with consume(500, 0.05) and
        librdkafka's fetch.wait.max.ms 500; see kafka.fetch_wait_max_ms.)
        """
        messages = self.consumer.consume(1, self.poll_timeout)
        if messages and self.poll_batch > 1:
            messages.extend(self.consumer.consume(self.poll_batch - 1, 0))
        return messages

    def handle(self, messages: list) -> None:
        events: list[Event] = []
        offsets: dict[Partition, int] = {}
        records: Counter[str] = Counter()
        rejected: Counter[str] = Counter()
        lost: dict[Partition, str] = {}
        mapper = self.mapper
        positions = self.positions
        epoch_of = self.incarnations.epoch
        consumed = time.time()
        for m in messages:
            err = m.error()
            if err is not None:
                # librdkafka's fatal state (e.g. fenced by a consumer with this
                # shard's instance id) reaches consume() as _FATAL, fatal() false.
                if err.fatal() or err.code() == KafkaError._FATAL:
                    self.ingest.fatal(err.name().lstrip("_").lower(), err.str())
                    break
                if err.code() == KafkaError._AUTO_OFFSET_RESET:
                    lost[Partition(m.topic(), m.partition())] = err.str()
                    continue
                if err.code() == KafkaError.UNKNOWN_TOPIC_OR_PART and m.topic() in self.topics:
                    # "Subscribed topic not available": said once per topic.
                    self.set_missing(self.missing | {m.topic()})
                    if self.layout is not None:
                        self.layout.gone(m.topic())
                if err.code() != KafkaError._PARTITION_EOF:
                    # A connection error of an outage can come this way too,
                    # after the consumer runs again: the same rules as error_cb.
                    self.ingest.on_error(err)
                continue
            topic, partition, offset = m.topic(), m.partition(), m.offset()
            key = Partition(topic, partition)
            last = positions.get(key)
            if last is not None and offset <= last:
                self.rewound(topic, partition, last, offset)
            positions[key] = offset
            offsets[key] = offset + 1
            records[topic] += 1
            result = mapper.map(topic, m.key(), m.value(), m.timestamp()[1], partition, offset,
                                epoch_of(topic), m.headers)
            if isinstance(result, str):
                rejected[result] += 1
            else:
                if result.__class__ is Hole:   # given up on, its subscribers told
                    rejected[result.reason] += 1
                result.consumed = consumed
                events.append(result)
        # The broker's share of the delivery latency (and the producer's:
        # record timestamp to consumed), once per event and node.
        _BROKER_LATENCY.observe_all([max(0.0, consumed - e.ts / 1000.0) for e in events])
        for topic, n in records.items():
            metrics.KAFKA_RECORDS.labels(topic).inc(n)
        for reason, n in rejected.items():
            metrics.KAFKA_REJECTED.labels(reason).inc(n)
        if lost:
            self.offsets_lost(lost)
        if not offsets:
            return
        self.ingest.broker_reached()
        batch_id = self.next_id
        self.next_id += 1
        self.pending[batch_id] = PendingBatch(offsets, not events)
        if events:
            self.in_flight += 1
            self.ingest.hand_over(batch_id, events)
        else:
            self.store_taken()
