"""
Tests for L{odin_ws.parent.supervisor} and L{odin_ws.parent.affinity}, with a fake
reactor whose processes the tests end, and AMP over L{iosim}.
"""

from __future__ import annotations

import json
import os
import socket
import sys

from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater
from twisted.logger import Logger, formatEvent
from twisted.trial.unittest import SynchronousTestCase, TestCase

from odin_ws.common.commands import Drain, Publish, Register, Stats
from odin_ws.common.config import Config, ConfigError, validate
from odin_ws.common.events import Event, encode_batch
from odin_ws.common.launch import SHARD_CONFIG_FD
from odin_ws.common.settings import Settings
from odin_ws.parent import affinity
from odin_ws.parent.hub import Hub
from odin_ws.parent.supervisor import ShardUnavailable, Supervisor
from tests.helpers import ROOT, FakeReactor, connect_shard, sample


def settings(shards=2, cpu_affinity="auto", **supervisor) -> Settings:
    values = {"shards": shards, "cpu_affinity": cpu_affinity,
              "supervisor.restart_min_delay": 1.0, "supervisor.restart_max_delay": 4.0,
              "supervisor.crash_loop_restarts": 100, "supervisor.crash_loop_window": 60.0,
              "supervisor.drain_timeout": 10.0, "supervisor.kill_timeout": 5.0}
    values.update({"supervisor." + k: v for k, v in supervisor.items()})
    return Settings.from_config(Config(validate(values)))




def config_of(process) -> str:
    """The configuration the parent wrote to a fake process's config pipe, once it closed it."""
    assert SHARD_CONFIG_FD in process.closed_fds, "config pipe left open"
    return process.written[SHARD_CONFIG_FD].decode("utf-8")


class SupervisorTestCase(SynchronousTestCase):
    def make(self, cpus=(0, 1), pin=None, env=None, **kw) -> Supervisor:
        self.reactor = FakeReactor()
        self.addCleanup(self.reactor.close_fds)
        self.hub = Hub(self.reactor, max_event_bytes=4096, max_queue_batches=8)
        self.pins: list[tuple[int, int]] = []
        self.logged: list[dict] = []
        self.patch(Supervisor, "log", Logger(observer=self.logged.append))
        self.settings = settings(**kw)
        sup = Supervisor(self.reactor, self.settings, self.hub,
                         argv_for=lambda i: ["/usr/bin/python3", "-m", "shard", str(i)],
                         env=env or {"ODINWS_TEST": "1"}, allowed_cpus=lambda: list(cpus),
                         pin=pin or (lambda pid, cpu: self.pins.append((pid, cpu))))
        return sup

    def connect(self, adopted: int):
        """Connect the adopted-th control channel to a L{FakeParentLink} via iosim."""
        return connect_shard(self.reactor, adopted)

    def register(self, sup: Supervisor, index: int, adopted: int | None = None):
        shard, pump = self.connect(index if adopted is None else adopted)
        proc = self.reactor.processes[index if adopted is None else adopted]
        shard.callRemote(Register, index=index, pid=proc.pid, capacity=100)
        pump.flush()
        return shard, pump

    def messages(self) -> list[str]:
        return [formatEvent(e) for e in self.logged]


class SpawnTests(SupervisorTestCase):
    def test_spawnsEachShardWithControlFd(self):
        """
        Each shard is spawned with its argv, the env, stdio pipes, fd 3 being
        the other end of the socketpair the parent adopted, and a pipe on fd
        4 its configuration is written to and then closed.
        """
        sup = self.make(shards=3, cpus=(0, 1, 2))
        sup.startService()
        procs = self.reactor.processes
        self.assertEqual([p.argv for p in procs],
                         [["/usr/bin/python3", "-m", "shard", str(i)] for i in range(3)])
        self.assertEqual({p.executable for p in procs}, {"/usr/bin/python3"})
        self.assertEqual([p.env for p in procs], [{"ODINWS_TEST": "1"}] * 3)
        for p in procs:
            self.assertEqual({k: v for k, v in p.childFDs.items() if k != 3},
                             {0: "w", 1: "r", 2: "r", SHARD_CONFIG_FD: "w"})
            self.assertEqual(config_of(p), self.settings.config.to_json())
        for i, (_fd, family, _factory) in enumerate(self.reactor.adoptedStreamConnections):
            self.assertEqual(family, socket.AF_UNIX)
            os.write(procs[i].fd3, b"ping %d" % i)
            self.assertEqual(os.read(self.reactor.adopted_fds[2 * i], 100), b"ping %d" % i)
        self.assertEqual([h.pid for h in sup.shards], [p.pid for p in procs])
        self.assertEqual([h.alive for h in sup.shards], [False] * 3)

    def test_noSettingsInEnvironment(self):
        """
        A shard's environment holds neither its configuration nor the
        ODINWS_* setting overrides the parent started with (they may hold
        secrets, and an environment is inherited and shows in /proc and
        crash dumps); the configuration, secrets included, reaches it on the
        pipe only.
        """
        secret = "s3cret-from-the-environment"
        sup = self.make(shards=1, env={"PATH": "/bin", "ODINWS_AUTH_SECRET": secret,
                                       "ODINWS_KAFKA_BROKERS": "k:9092"})
        sup.startService()
        [proc] = self.reactor.processes
        self.assertEqual(proc.env, {"PATH": "/bin"})
        self.assertNotIn(self.settings.config.to_json(), proc.env.values())
        self.assertIn('"auth.secret"', config_of(proc))

    def test_spawnFailureRetried(self):
        """A spawn that fails with OSError is logged and retried with backoff."""
        sup = self.make(shards=1)
        self.reactor.spawn_error = OSError("EAGAIN")
        sup.startService()
        self.assertEqual(self.reactor.processes, [])
        self.assertTrue(any("could not start" in m for m in self.messages()))
        self.reactor.spawn_error = None
        self.reactor.advance(1.0)
        self.assertEqual(len(self.reactor.processes), 1)
        self.assertEqual(sup.shards[0].restarts, 1)


class AffinityTests(SupervisorTestCase):
    def test_autoUsesParentCpus(self):
        """'auto' gives shard i the i-th CPU the parent may use, wrapping around."""
        sup = self.make(shards=3, cpus=(2, 5))
        sup.startService()
        self.assertEqual([h.cpu for h in sup.shards], [2, 5, 2])
        self.assertEqual(self.pins, [(p.pid, c) for p, c in
                                     zip(self.reactor.processes, [2, 5, 2])])
        self.assertIn("cpu_affinity: 3 shards share 2 CPUs", self.messages())

    def test_list(self):
        """A CPU list is used in order, wrapping around."""
        sup = self.make(shards=3, cpus=(0, 1, 2, 3), cpu_affinity=[3, 1])
        self.assertEqual([h.cpu for h in sup.shards], [3, 1, 3])

    def test_listOutsideAllowed(self):
        """A listed CPU the parent may not use is a one-line config error naming the key."""
        e = self.assertRaises(ConfigError, self.make, shards=1, cpus=(0, 1), cpu_affinity=[1, 4])
        self.assertTrue(str(e).startswith("cpu_affinity: CPU 4 not available"))
        self.assertNotIn("\n", str(e))

    def test_off(self):
        """'off' pins nothing."""
        sup = self.make(shards=2, cpu_affinity="off")
        sup.startService()
        self.assertEqual([h.cpu for h in sup.shards], [None, None])
        self.assertEqual(self.pins, [])

    def test_pinFailureLogged(self):
        """A refused pin is logged and the shard runs unpinned."""
        def refuse(pid, cpu):
            raise OSError("EINVAL")
        sup = self.make(shards=1, pin=refuse)
        sup.startService()
        self.assertEqual(len(self.reactor.processes), 1)
        self.assertTrue(any("cannot pin" in m for m in self.messages()))

    def test_assignHelpers(self):
        """Affinity with an unknown allowed set: auto pins nothing, a list is trusted."""
        self.assertEqual(affinity.assign("auto", 2, None), [None, None])
        self.assertEqual(affinity.assign([7], 2, None), [7, 7])
        self.assertEqual(affinity._ranges([0, 1, 2, 5, 7, 8]), "0-2,5,7-8")


class ControlTests(SupervisorTestCase):
    def test_registerMakesAlive(self):
        """Register makes the handle alive, fires readiness and attaches the shard to the hub."""
        sup = self.make(shards=2)
        sup.startService()
        ready = sup.wait_all_registered()
        self.register(sup, 0)
        self.assertNoResult(ready)
        self.register(sup, 1)
        self.assertEqual(self.successResultOf(ready), sup.shards)
        h = sup.shards[0]
        self.assertEqual((h.alive, h.accepting, h.capacity, h.pid),
                         (True, True, 100, self.reactor.processes[0].pid))
        self.assertEqual(self.hub.attached, [0, 1])

    def test_registerAnswersWithTheRelayedMarks(self):
        """
        A shard that registers (a restarted one) is answered with the hub's
        marks: the highest offset the node relayed of each partition before
        it came, which it counts as seen before it delivers what it consumes.
        """
        sup = self.make(shards=2)
        sup.startService()
        first, pump = self.register(sup, 0)
        first.callRemote(Publish, batch=encode_batch(
            [Event.build("A", "trade", b"1", 1, "odin.trades", 3, o, "e1") for o in (7, 8)]))
        pump.flush()
        shard, pump = self.connect(1)
        answer = shard.callRemote(Register, index=1, pid=self.reactor.processes[1].pid,
                                  capacity=100)
        pump.flush()
        marks = json.loads(self.successResultOf(answer)["marks"])
        self.assertEqual(marks, [{"topic": "odin.trades", "partition": 3, "epoch": "e1",
                                  "offset": 8}])

    def test_statsUpdateHandle(self):
        """Stats updates the load, the accepting flag and the status shown in /health."""
        sup = self.make(shards=1)
        sup.startService()
        shard, pump = self.register(sup, 0)
        warmup = {"state": "done", "events": 12, "partitions": 2, "seconds": 0.1}
        status = {"accepting": False, "kafka": {"connected": True}, "warmup": warmup,
                  "outbound_native": "native"}
        shard.callRemote(Stats, connections=7, capacity=50,
                         status=json.dumps(status).encode())
        pump.flush()
        health = sup.snapshot()[0]
        self.assertEqual(health, {"index": 0, "pid": self.reactor.processes[0].pid, "cpu": 0,
                                  "alive": True, "accepting": False, "stalled": False,
                                  "connections": 7,
                                  "capacity": 50, "restarts": 0, "crash_looping": False,
                                  "kafka": {"connected": True}, "warmup": warmup,
                                  "registry": None, "outbound_native": "native"})

    def test_publishRelayedToOtherShards(self):
        """A Publish from one shard reaches the other shard as a Deliver."""
        sup = self.make(shards=2)
        sup.startService()
        shard0, pump0 = self.register(sup, 0)
        shard1, pump1 = self.register(sup, 1)
        data = encode_batch([Event.build("T", "trade", b"1", 1, "t", 0, 1)])
        answered = shard0.callRemote(Publish, batch=data)
        pump0.flush()
        pump1.flush()
        self.assertEqual(self.successResultOf(answered), {})
        self.assertEqual(shard1.delivered, [data])
        self.assertEqual(shard0.delivered, [])

    def test_callFailsFastWhenNotAlive(self):
        """Calling an unregistered shard fails at once with ShardUnavailable."""
        sup = self.make(shards=1)
        sup.startService()
        self.failureResultOf(sup.shards[0].call(Drain, window=1.0), ShardUnavailable)

    def test_channelLostDetachesAndStopsShard(self):
        """When the control channel closes, the shard is not alive, detached, and sent TERM."""
        sup = self.make(shards=1)
        sup.startService()
        shard, pump = self.register(sup, 0)
        shard.transport.loseConnection()
        pump.flush()
        h = sup.shards[0]
        self.assertEqual((h.alive, h.link), (False, None))
        self.assertEqual(self.hub.attached, [])
        self.assertEqual(self.reactor.processes[0].signals, ["TERM"])
        self.reactor.processes[0].end(signal=15)
        self.reactor.advance(1.0)
        self.assertEqual(len(self.reactor.processes), 2)


class RestartTests(SupervisorTestCase):
    def crash(self, index=-1):
        self.reactor.processes[index].end(code=1)

    def test_backoffDoublesUpToMax(self):
        """Consecutive crashes wait 1, 2, 4, 4 seconds before the restart."""
        sup = self.make(shards=1)
        sup.startService()
        before = sample("odinws_shard_restarts_total", shard="0")
        for delay in (1.0, 2.0, 4.0, 4.0):
            spawned = len(self.reactor.processes)
            self.crash()
            self.reactor.advance(delay / 2)
            self.assertEqual(len(self.reactor.processes), spawned)
            self.reactor.advance(delay / 2)
            self.assertEqual(len(self.reactor.processes), spawned + 1)
        self.assertEqual(sup.shards[0].restarts, 4)
        self.assertEqual(sample("odinws_shard_restarts_total", shard="0") - before, 4)

    def test_restartCounterExportedAtZero(self):
        """
        odinws_shard_restarts is exported at 0 for every shard before any
        restart, so an alert on increase() sees the first one.
        """
        from odin_ws.common.metrics import REGISTRY
        # Shard numbers no other test uses: the registry is the process's.
        self.make(shards=40, cpus=tuple(range(40)))
        for i in range(30, 40):
            self.assertEqual(
                REGISTRY.get_sample_value("odinws_shard_restarts_total", {"shard": str(i)}), 0.0,
                f"shard {i} not exported")

    def test_shardThatWasUpRestartsAtOnce(self):
        """
        A shard that dies after it had been up (registered for
        restart_reset_after) comes back at once each time, however recent
        its previous crash; one that dies before registering waits
        restart_min_delay.
        """
        sup = self.make(shards=1)
        sup.startService()
        for n in range(3):
            self.register(sup, 0, adopted=n)
            self.reactor.advance(2.0)
            spawned = len(self.reactor.processes)
            self.crash()
            self.reactor.advance(0)
            self.assertEqual(len(self.reactor.processes), spawned + 1, f"restart {n + 1}")
        self.crash()
        self.reactor.advance(0.5)
        self.assertEqual(len(self.reactor.processes), 4)
        self.reactor.advance(0.5)
        self.assertEqual(len(self.reactor.processes), 5)

    def test_healthyRunResetsDelay(self):
        """A shard that ran longer than crash_loop_window restarts after the minimum delay."""
        sup = self.make(shards=1)
        sup.startService()
        for delay in (1.0, 2.0, 4.0):
            self.crash()
            self.reactor.advance(delay)
        self.reactor.advance(61)
        self.crash()
        self.reactor.advance(1.0)
        self.assertEqual(len(self.reactor.processes), 5)

    def test_crashLoopingFlag(self):
        """
        crash_looping is set after crash_loop_restarts restarts within the
        window and clears once the shard has stayed up longer than it.
        """
        sup = self.make(shards=1, crash_loop_restarts=3, restart_max_delay=1.0)
        sup.startService()
        h = sup.shards[0]
        for _ in range(2):
            self.crash()
            self.reactor.advance(1.0)
        self.assertFalse(h.crash_looping)
        self.crash()
        self.reactor.advance(1.0)
        self.assertTrue(h.crash_looping)
        self.assertTrue(sup.snapshot()[0]["crash_looping"])
        self.reactor.advance(61)
        self.assertFalse(h.crash_looping)

    def test_pendingRestartCancelledOnStop(self):
        """Stopping cancels a scheduled restart; no process is spawned afterwards."""
        sup = self.make(shards=1)
        sup.startService()
        self.crash()
        d = sup.stopService()
        self.successResultOf(d)
        self.reactor.advance(10)
        self.assertEqual(len(self.reactor.processes), 1)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_restartAfterReloadGetsReloadedConfig(self):
        """
        A shard restarted after a reload starts with the reloaded
        configuration, not the one of the parent's start-up.
        """
        sup = self.make(shards=1)
        sup.startService()
        reloaded = Settings.from_config(self.settings.config.replace(limits__max_connections=7))
        sup.reconfigure(reloaded)
        self.crash()
        self.reactor.advance(1.0)
        first, restarted = self.reactor.processes
        self.assertEqual(json.loads(config_of(first))["limits.max_connections"],
                         self.settings.limits.max_connections)
        self.assertEqual(json.loads(config_of(restarted))["limits.max_connections"], 7)

    def test_restartedShardRegistersAgain(self):
        """After a restart the new process registers on a new channel and is attached again."""
        sup = self.make(shards=2)
        sup.startService()
        self.register(sup, 0)
        self.register(sup, 1)
        self.reactor.processes[0].end(code=1)
        self.assertFalse(sup.shards[0].alive)
        self.reactor.advance(1.0)
        self.assertEqual(self.reactor.processes[2].argv[-1], "0")
        self.register(sup, 0, adopted=2)
        self.assertTrue(sup.shards[0].alive)
        self.assertEqual(self.hub.attached, [0, 1])


class StopTests(SupervisorTestCase):
    def test_drainThenTermThenKill(self):
        """
        Stop drains every alive shard (window = drain_timeout / 2), then
        sends TERM, then KILL after kill_timeout to a shard still running,
        and fires only when every process has ended.
        """
        sup = self.make(shards=2)
        sup.startService()
        shards = [self.register(sup, i) for i in range(2)]
        for shard, _ in shards:
            shard.hold_drain = True
        d = sup.stopService()
        for _, pump in shards:
            pump.flush()
        self.assertEqual([s.drains for s, _ in shards], [[5.0], [5.0]])
        procs = self.reactor.processes
        self.assertEqual([p.signals for p in procs], [[], []])
        for shard, pump in shards:
            shard.held.pop().callback({"closed": 3})
            pump.flush()
        self.assertEqual([p.signals for p in procs], [["TERM"], ["TERM"]])
        procs[0].end(signal=15)
        shards[0][1].flush()
        self.assertNoResult(d)
        self.reactor.advance(5.0)
        self.assertEqual([p.signals for p in procs], [["TERM"], ["TERM", "KILL"]])
        self.assertNoResult(d)
        procs[1].end(signal=9)
        shards[1][1].flush()
        self.successResultOf(d)
        self.assertEqual(len(procs), 2)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_stopBoundedByDrainPlusKillTimeout(self):
        """
        A shard that never answers Drain and then ignores SIGTERM (e.g. stuck
        closing its Kafka consumer while the broker is down) holds the stop
        up no longer than documented: SIGTERM at drain_timeout, SIGKILL at
        drain_timeout + kill_timeout, and stop fires as soon as it has exited.
        """
        sup = self.make(shards=1)
        sup.startService()
        shard, pump = self.register(sup, 0)
        shard.hold_drain = True
        d = sup.stopService()
        pump.flush()
        proc = self.reactor.processes[0]
        self.reactor.advance(9.9)
        self.assertEqual(proc.signals, [])
        self.reactor.advance(0.1)
        self.assertEqual(proc.signals, ["TERM"])
        self.reactor.advance(4.9)
        self.assertEqual(proc.signals, ["TERM"])
        self.reactor.advance(0.1)
        self.assertEqual(proc.signals, ["TERM", "KILL"])
        self.assertNoResult(d)
        proc.end(signal=9)
        pump.flush()
        self.successResultOf(d)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_unregisteredShardTerminatedWithoutDrain(self):
        """A shard that never registered gets TERM at once; stop waits for its exit."""
        sup = self.make(shards=1)
        sup.startService()
        d = sup.stopService()
        self.assertEqual(self.reactor.processes[0].signals, ["TERM"])
        self.assertNoResult(d)
        self.reactor.processes[0].end()
        self.successResultOf(d)

    def test_stopFailsRegistrationWaiters(self):
        """Waiting for registration fails cleanly when the supervisor stops first."""
        sup = self.make(shards=1)
        sup.startService()
        ready = sup.wait_all_registered()
        sup.stopService()
        self.failureResultOf(ready)
        self.reactor.processes[0].end()


class OutputTests(SupervisorTestCase):
    def output(self):
        sup = self.make(shards=1)
        sup.startService()
        return self.reactor.processes[0].proto

    def test_linesRelogged(self):
        """Output lines are logged with the shard index, split across reads correctly."""
        proto = self.output()
        proto.outReceived(b"hello\nwor")
        proto.outReceived(b"ld\r\n")
        proto.errReceived(b"Traceback")
        self.reactor.processes[0].end(code=1)
        lines = [m for m in self.messages() if m.startswith("shard 0: ")]
        self.assertEqual(lines, ["shard 0: hello", "shard 0: world", "shard 0: Traceback"])

    def test_longLineCut(self):
        """A line longer than the bound is logged cut, once, and the next line is intact."""
        proto = self.output()
        proto.outReceived(b"x" * 5000)
        proto.outReceived(b"y" * 5000 + b"\nnext\n")
        lines = [m for m in self.messages() if m.startswith("shard 0: ")]
        self.assertEqual(len(lines), 2)
        self.assertTrue(lines[0].startswith("shard 0: " + "x" * 4096 + " [cut"))
        self.assertEqual(lines[1], "shard 0: next")

    def test_floodSummarized(self):
        """Past the per-second line budget, lines are counted and summarized, not logged."""
        proto = self.output()
        proto.outReceived(b"line\n" * 250)
        self.reactor.advance(1.0)
        lines = [m for m in self.messages() if m.startswith("shard 0: ")]
        self.assertEqual(len(lines), 201)
        self.assertIn("50 output lines not logged", lines[-1])
        self.assertEqual(self.reactor.getDelayedCalls(), [])


CHILD = """
import os, socket, sys
from twisted.internet import reactor
from twisted.internet.protocol import Factory
from twisted.protocols import amp
from odin_ws.common.commands import Drain, Register

class Child(amp.AMP):
    def connectionMade(self):
        super().connectionMade()
        self.callRemote(Register, index=int(sys.argv[1]), pid=os.getpid(), capacity=5)

    @Drain.responder
    def drain(self, window):
        return {"closed": 0}

    def connectionLost(self, reason):
        super().connectionLost(reason)
        if reactor.running:
            reactor.stop()

mode = "blocking" if os.get_blocking(3) else "non-blocking"
reactor.adoptStreamConnection(3, socket.AF_UNIX, Factory.forProtocol(Child))
os.close(3)
print("child", sys.argv[1], "up", mode, flush=True)
reactor.run()
"""


class RealProcessTests(TestCase):
    timeout = 60

    @inlineCallbacks
    def test_realShardsRegisterAndStop(self):
        """
        Real child processes get the control channel as non-blocking fd 3,
        register over AMP, are pinned, have their stdout re-logged, and are drained and
        stopped with no process left behind.
        """
        from twisted.internet import reactor
        script = self.mktemp()
        with open(script, "w") as f:
            f.write(CHILD)
        root = ROOT
        env = dict(os.environ, PYTHONPATH=root)
        logged: list[dict] = []
        self.patch(Supervisor, "log", Logger(observer=logged.append))
        hub = Hub(reactor, max_event_bytes=4096, max_queue_batches=8)
        sup = Supervisor(reactor, settings(shards=2), hub,
                         argv_for=lambda i: [sys.executable, script, str(i)], env=env)
        sup.startService()
        stopped = False
        try:
            handles = yield sup.wait_all_registered().addTimeout(30, reactor)
            pids = [h.pid for h in handles]
            self.assertEqual(hub.attached, [0, 1])
            for h in handles:
                if h.cpu is not None:
                    self.assertEqual(os.sched_getaffinity(h.pid), {h.cpu})
            # The parent hands fd 3 over non-blocking, as adoption requires.
            wanted = {"shard 0: child 0 up non-blocking", "shard 1: child 1 up non-blocking"}
            yield poll(reactor, lambda: wanted <= {formatEvent(e) for e in logged})
            yield sup.stopService()
            stopped = True
            self.assertEqual([h.alive for h in sup.shards], [False, False])
            for pid in pids:
                self.assertRaises(ProcessLookupError, os.kill, pid, 0)
            self.assertTrue(any("drained" in formatEvent(e) for e in logged))
        finally:
            if not stopped:
                yield sup.stopService()


@inlineCallbacks
def poll(reactor, condition, deadline: float = 20.0, step: float = 0.05):
    """Wait until C{condition()} is true, failing after C{deadline} seconds."""
    end = reactor.seconds() + deadline
    while not condition():
        if reactor.seconds() > end:
            raise AssertionError("condition not met before the deadline")
        yield deferLater(reactor, step, lambda: None)
