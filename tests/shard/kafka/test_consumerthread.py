"""
Unit tests of L{odin_ws.shard.kafka.consumerthread}: a fatally failed
consumer is replaced after a backoff, and the thread ends once, at a stop.
"""

from __future__ import annotations

import threading

from confluent_kafka import KafkaException
from twisted.trial.unittest import SynchronousTestCase

from odin_ws.shard.kafka.consumerthread import MAX_BACKOFF, MIN_BACKOFF, STABLE_AFTER, ConsumerThread
from tests.helpers import sample


class FakeOwner:
    def __init__(self):
        self.calls: list = []

    def replacing(self, delay):
        self.calls.append(("replacing", delay))

    def replaced(self):
        self.calls.append(("replaced",))

    def note_error(self, kind, text, level="warn"):
        self.calls.append(("error", kind))

    def consumer_closed(self, finished):
        self.calls.append(("closed", finished))

    def thread_failed(self, failure):
        self.calls.append(("failed", failure.getErrorMessage()))


class RecordingStop(threading.Event):
    """A stop event whose waits return at once, recorded (no real time passes)."""

    def __init__(self):
        super().__init__()
        self.waits: list[float] = []

    def wait(self, timeout=None):
        self.waits.append(timeout)
        return self.is_set()


class FakeClock:
    """Monotonic time that only the scripted loops advance."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class ScriptedLoop:
    """A loop that, when run, does what its script says: fail fatally, stop, or end."""

    def __init__(self, thread: ConsumerThread, consumer, first_id: int, outcome: str,
                 runs_for: float):
        self.thread, self.consumer, self.next_id = thread, consumer, first_id
        self.outcome, self.runs_for = outcome, runs_for

    def run(self):
        self.thread.clock.now += self.runs_for
        self.next_id += 3  # three batches handed over
        if self.outcome == "fatal":
            self.thread.fatal.set()
        elif self.outcome == "stop":
            self.thread.stopping.set()
        # "bug": the loop died of an exception, which it reported itself.


class ConsumerThreadTests(SynchronousTestCase):

    def make(self, outcomes: list[tuple[str, float]], consumers=None):
        self.owner = FakeOwner()
        self.loops: list[ScriptedLoop] = []
        self.made = 0
        script = iter(outcomes)

        def make_consumer():
            self.made += 1
            if consumers is not None:
                return consumers.pop(0)()
            return f"consumer{self.made}"

        def make_loop(consumer, first_id):
            outcome, runs_for = next(script)
            loop = ScriptedLoop(thread, consumer, first_id, outcome, runs_for)
            self.loops.append(loop)
            return loop

        thread = ConsumerThread(self.owner, "consumer0", make_consumer, make_loop,
                                RecordingStop(), threading.Event(), "finished", clock=FakeClock())
        return thread

    def test_fatalReplacedWithBackoff(self):
        """
        Each fatally failed consumer is replaced by a new one after a
        doubling backoff (counted, reported before and after), batch ids go
        on from the last loop's, and the thread reports the consumer closed
        once, at the end.
        """
        before = sample("odinws_kafka_consumer_replacements_total")
        thread = self.make([("fatal", 1.0), ("fatal", 1.0), ("stop", 1.0)])
        thread.run()
        self.assertEqual([loop.consumer for loop in self.loops],
                         ["consumer0", "consumer1", "consumer2"])
        self.assertEqual([loop.next_id for loop in self.loops], [3, 6, 9])
        self.assertEqual(thread.stopping.waits, [MIN_BACKOFF, 2 * MIN_BACKOFF])
        self.assertEqual(self.owner.calls, [
            ("replacing", MIN_BACKOFF), ("replaced",), ("replacing", 2 * MIN_BACKOFF),
            ("replaced",), ("closed", "finished")])
        self.assertEqual(sample("odinws_kafka_consumer_replacements_total") - before, 2)

    def test_backoffCappedAndStartsOverWhenStable(self):
        """
        Consumers fenced again soon after joining (two nodes with one
        node_id) wait ever longer, up to MAX_BACKOFF; one that ran for
        STABLE_AFTER before failing is replaced after MIN_BACKOFF again.
        """
        thread = self.make([("fatal", 1.0)] * 8 + [("fatal", STABLE_AFTER), ("stop", 0.0)])
        thread.run()
        waits = thread.stopping.waits
        self.assertEqual(waits[:6], [1.0, 2.0, 4.0, 8.0, 16.0, MAX_BACKOFF])
        self.assertEqual(waits[6:8], [MAX_BACKOFF, MAX_BACKOFF])
        self.assertEqual(waits[8], MIN_BACKOFF)

    def test_stopDuringBackoff(self):
        """A stop while a replacement waits ends the thread without a new consumer."""
        thread = self.make([("fatal", 1.0)])
        thread.stopping.wait = lambda timeout=None: True  # the stop arrives during the wait
        thread.run()
        self.assertEqual(self.made, 0)
        self.assertEqual(self.owner.calls[-1], ("closed", "finished"))

    def test_replacementCannotBeBuilt(self):
        """
        A replacement librdkafka refuses to build is reported and tried
        again after the next backoff.
        """
        def refused():
            raise KafkaException("no")
        thread = self.make([("fatal", 1.0), ("stop", 0.0)],
                           consumers=[refused, lambda: "consumer2"])
        thread.run()
        self.assertEqual([loop.consumer for loop in self.loops], ["consumer0", "consumer2"])
        self.assertEqual(thread.stopping.waits, [1.0, 2.0])
        self.assertIn(("error", "consumer_create"), self.owner.calls)

    def test_loopEndsWithoutFatal(self):
        """A loop that ends for another reason (its bug, reported) is not replaced."""
        thread = self.make([("bug", 1.0)])
        thread.run()
        self.assertEqual(self.made, 0)
        self.assertEqual(self.owner.calls, [("closed", "finished")])

    def test_loopCannotBeBuilt(self):
        """
        A loop that cannot be built (a bug) ends the thread with the
        failure reported to the owner (its status shows it) and the
        consumer closed, not as a silent stop.
        """
        closed = []

        class Closable:
            def close(self):
                closed.append(self)

        consumer = Closable()
        thread = self.make([])

        def broken(consumer, first_id):
            raise RuntimeError("cannot build")
        thread.make_loop = broken
        thread.consumer = consumer
        thread.run()
        self.assertEqual(self.owner.calls, [("failed", "cannot build"), ("closed", "finished")])
        self.assertEqual(closed, [consumer])
