"""
The body of a shard's Kafka consumer thread (L{ConsumerThread}): run a
L{odin_ws.shard.kafka.consumerloop.ConsumerLoop} on a consumer, and when
librdkafka declares that consumer fatally failed, close it and build a new
one, after a backoff.

Why replace rather than stop: a consumer in librdkafka's fatal state
returns nothing more, for good. Measured on Apache Kafka 4.4 with
confluent-kafka 2.16, a broker outage longer than the session can fence a
static member's own consumer ("Static consumer fenced by other consumer
with same group.instance.id": a JoinGroup the broker served but whose
answer was lost), and before this the shard then consumed nothing until it
was restarted. A new consumer joins under the same instance id, which the
broker accepts at once (it replaces the old member). Replacing in place
keeps the shard's clients connected and its history; exiting the shard for
the supervisor to restart would close every client of the shard (and after
an outage, of every shard at once).

When the fencing is real (two nodes configured with one node_id), the two
consumers fence each other in turn: the backoff doubles up to
L{MAX_BACKOFF} and is kept there while each new consumer is fenced within
L{STABLE_AFTER}, and the status shows the error (naming the node_id) while
a replacement waits.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Protocol

from confluent_kafka import Consumer, KafkaException
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from odin_ws.common import metrics
from odin_ws.common.backoff import Backoff
from odin_ws.shard.kafka.consumerloop import ConsumerLoop
from odin_ws.shard.kafka.errors import describe_error

#: Seconds before the first replacement of a fatally failed consumer.
MIN_BACKOFF = 1.0
#: Longest wait between replacements.
MAX_BACKOFF = 30.0
#: Seconds a consumer must have run for the backoff to start over.
STABLE_AFTER = 60.0


class ThreadOwner(Protocol):
    """What the thread reports to (L{odin_ws.shard.kafka.ingest.KafkaIngest})."""

    def replacing(self, delay: float) -> None: ...

    def replaced(self) -> None: ...

    def note_error(self, kind: str, text: str, level: str = "warn") -> None: ...

    def thread_failed(self, failure: Failure) -> None: ...

    def consumer_closed(self, finished: Deferred) -> None: ...


class ConsumerThread:
    """
    @param owner: the status owner.
    @param consumer: the first consumer (built in the reactor thread, so a
        bad configuration is reported at start).
    @param make_consumer: builds a replacement (same configuration).
    @param make_loop: a loop for a consumer, numbering its batches from the
        given id (ids of batches still in the reactor stay unique).
    @param stopping: set when the thread should end.
    @param fatal: set (by the owner) when the current consumer is fatally
        failed; the loop then ends and this thread replaces it.
    @param finished: handed to C{owner.consumer_closed} as the thread ends.
    """

    def __init__(self, owner: ThreadOwner, consumer: Consumer,
                 make_consumer: Callable[[], Consumer],
                 make_loop: Callable[[Consumer, int], ConsumerLoop],
                 stopping: threading.Event, fatal: threading.Event, finished: Deferred,
                 clock: Callable[[], float] = time.monotonic):
        self.owner = owner
        self.consumer: Consumer | None = consumer
        self.make_consumer = make_consumer
        self.make_loop = make_loop
        self.stopping = stopping
        self.fatal = fatal
        self.finished = finished
        self.clock = clock
        self.backoff = Backoff(MIN_BACKOFF, MAX_BACKOFF)

    def run(self) -> None:
        next_id = 0
        try:
            while not self.stopping.is_set():
                if self.consumer is not None:
                    loop = self.make_loop(self.consumer, next_id)
                    started = self.clock()
                    loop.run()  # closes the consumer
                    next_id = loop.next_id
                    self.consumer = None
                    if not self.fatal.is_set():
                        return  # stopped, or the loop died of a bug (reported)
                    if self.clock() - started >= STABLE_AFTER:
                        self.backoff.reset()
                self.fatal.clear()
                delay = self.backoff.next()
                self.owner.replacing(delay)
                if self.stopping.wait(delay):
                    return
                try:
                    self.consumer = self.make_consumer()
                except (KafkaException, ValueError, TypeError) as e:
                    self.owner.note_error("consumer_create", describe_error(e), "error")
                    continue
                metrics.KAFKA_REPLACEMENTS.inc()
                self.owner.replaced()
        except Exception:
            # Building a loop failed (the loop reports its own bugs): the
            # thread ends, and says why, rather than leave the shard reading
            # nothing with a status that looks like a stop.
            self.owner.thread_failed(Failure())
            if self.consumer is not None:
                _close_quietly(self.consumer)
        finally:
            self.owner.consumer_closed(self.finished)


def _close_quietly(consumer: Consumer) -> None:
    """Close a consumer no loop took over (what closing raises changes nothing)."""
    try:
        consumer.close()
    except Exception:
        pass
