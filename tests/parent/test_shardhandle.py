"""
Tests for L{odin_ws.parent.shardhandle.ShardHandle}: the one owner of a
shard's state, changed only through its methods.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from odin_ws.common.config import Config, validate
from odin_ws.common.settings import Settings
from odin_ws.parent.shardhandle import ShardHandle


class FakeProcessTransport:
    def __init__(self, pid: int):
        self.pid = pid


def handle(**supervisor) -> tuple[ShardHandle, Clock]:
    values = {"supervisor.restart_min_delay": 1.0, "supervisor.restart_max_delay": 4.0}
    values.update({"supervisor." + k: v for k, v in supervisor.items()})
    clock = Clock()
    settings = Settings.from_config(Config(validate(values))).supervisor
    return ShardHandle(0, None, clock, settings), clock


class PlacementTests(SynchronousTestCase):
    def test_reserved_counted_over_stale_report(self):
        """
        A handoff in flight stays counted when a Stats report made before the
        shard adopted it arrives, and is the shard's own count once answered.
        """
        h, _ = handle()
        h.registered(object(), pid=7, capacity=10)
        h.reported(3, 10, {})
        h.reserve()
        self.assertEqual((h.connections, h.pending), (4, 1))
        h.reported(3, 10, {})
        self.assertEqual(h.connections, 4)
        h.handoff_done()
        h.reported(4, 10, {})
        self.assertEqual((h.connections, h.pending), (4, 0))

    def test_failed_handoff_released(self):
        """A handoff that failed gives its slot back."""
        h, _ = handle()
        h.reserve()
        h.handoff_failed()
        self.assertEqual((h.connections, h.pending), (0, 0))

    def test_unreadable_status_keeps_the_last(self):
        """A report without a readable status updates the load but keeps the last status."""
        h, _ = handle()
        h.reported(1, 10, {"accepting": False, "kafka": {"connected": True}})
        h.reported(2, 20, None)
        self.assertEqual((h.connections, h.capacity, h.accepting, h.status["kafka"]),
                         (2, 20, False, {"connected": True}))


class ProcessTests(SynchronousTestCase):
    def test_late_exit_ignored(self):
        """The exit of a process that is no longer the shard's changes nothing."""
        h, clock = handle()
        old, new = FakeProcessTransport(1), FakeProcessTransport(2)
        h.started(old)
        h.exited(old)
        h.started(new)
        clock.advance(3)
        self.assertIsNone(h.exited(old))
        self.assertEqual((h.running, h.pid), (True, 2))
        self.assertEqual(h.exited(new), 3.0)
        self.assertEqual((h.running, h.pid), (False, None))

    def test_deadProcessStatusForgotten(self):
        """
        The Kafka status of a process that exited is not shown for the
        shard any more: its restart shows none (not its predecessor's
        partitions) until it reports itself.
        """
        h, _ = handle()
        process = FakeProcessTransport(1)
        h.started(process)
        h.registered(object(), pid=1, capacity=10)
        h.reported(0, 10, {"kafka": {"assigned": ["t[1]"]}})
        h.exited(process)
        h.started(FakeProcessTransport(2))
        h.registered(object(), pid=2, capacity=10)
        self.assertEqual((h.status, h.as_health()["kafka"]), ({}, None))

    def test_backoff(self):
        """Delays double up to the maximum and start over after a healthy run."""
        h, _ = handle(crash_loop_window=60.0)
        self.assertEqual([h.next_delay(0.1) for _ in range(4)], [1.0, 2.0, 4.0, 4.0])
        self.assertEqual(h.next_delay(61.0), 0.0)
        self.assertEqual(h.next_delay(0.1), 1.0)

    def life(self, h: ShardHandle, clock: Clock, up: float, register: bool = True) -> float:
        """One process of the shard: started, registered, up C{up} s, died; its restart delay."""
        process = FakeProcessTransport(len(self.pids) + 1)
        self.pids.append(process.pid)
        h.started(process)
        if register:
            h.registered(object(), pid=process.pid, capacity=10)
        clock.advance(up)
        delay = h.next_delay(h.exited(process))
        clock.advance(delay)
        h.restarted()
        return delay

    def setUp(self):
        self.pids: list[int] = []

    def test_runningShardRestartsAtOnce(self):
        """
        A shard killed after it had been up (restart_reset_after, 1 s by
        default) comes back at once every time, however recent its previous
        crash: the delays are for shards that cannot stay up.
        """
        h, clock = handle()
        self.assertEqual([self.life(h, clock, up=3.0) for _ in range(3)], [0.0, 0.0, 0.0])

    def test_shortRunsDouble(self):
        """
        A shard that dies before it registered, or within restart_reset_after
        of it, waits restart_min_delay, then twice as long as the time
        before; a run that was up starts over.
        """
        h, clock = handle()
        delays = [self.life(h, clock, up=0.5), self.life(h, clock, up=2.0, register=False),
                  self.life(h, clock, up=0.5), self.life(h, clock, up=2.0),
                  self.life(h, clock, up=0.5)]
        self.assertEqual(delays, [1.0, 2.0, 4.0, 0.0, 1.0])

    def test_crashLoopingDoubles(self):
        """Once crash-looping, a shard doubles even after runs that were up."""
        h, clock = handle(crash_loop_restarts=2)
        self.assertEqual([self.life(h, clock, up=3.0) for _ in range(4)], [0.0, 0.0, 1.0, 2.0])

    def test_failedSpawnAfterARunDoubles(self):
        """A process that could not even be spawned after a run that was up doubles."""
        h, clock = handle()
        self.assertEqual(self.life(h, clock, up=3.0), 0.0)
        self.assertEqual(h.next_delay(0.0), 1.0)

    def test_crash_loop_reported_once(self):
        """restarted() says True only for the restart that starts a crash loop."""
        h, _ = handle(crash_loop_restarts=2)
        self.assertEqual([h.restarted() for _ in range(3)], [False, True, False])
        self.assertEqual((h.restarts, h.recent_restarts), (3, 3))
