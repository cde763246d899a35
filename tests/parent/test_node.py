"""
Tests for L{odin_ws.parent.node}: the parent as C{makeService} assembles it,
and the one reload path (issue 16: a reload must reach every component that
holds settings, /health and the admin listener included). Driven by fakes:
a fake reactor whose shard processes are never real, AMP over L{iosim}, and
a fake C{load_settings} standing for the re-read file.
"""

from __future__ import annotations

import json

from twisted.trial.unittest import SynchronousTestCase

from odin_ws import tap
from odin_ws.common import config as configmod
from odin_ws.common.commands import Register, Stats
from odin_ws.common.launch import SHARD_CONFIG_FD
from odin_ws.common.settings import Settings
from tests.helpers import FakeOptions, FakeReactor, FdTransport, Response, connect_shard, get, sample


class ReloadTests(SynchronousTestCase):
    """
    A node of two shards holding 100 and 101 connections (capacity 10,000
    each) behind a public and an admin listener.
    """

    def setUp(self):
        self.reactor = FakeReactor()
        self.addCleanup(self.reactor.close_fds)
        self.started = configmod.load(None, environ={}).replace(
            shards=2, cpu_affinity="off", listen__port="tcp:0",
            listen__admin_port="tcp:0:interface=127.0.0.1")
        #: What the configuration file says now (load_settings' answer).
        self.file = self.started
        self.node = tap.makeService(FakeOptions(Settings.from_config(self.started), self.load),
                                    reactor=self.reactor)
        self.public, self.admin = self.node.dispatchers
        self.node.supervisor.startService()
        self.addCleanup(self.stop)
        self.shards = []
        for index, connections in enumerate((100, 101)):
            shard, pump = connect_shard(self.reactor, index)
            shard.callRemote(Register, index=index, pid=self.reactor.processes[index].pid,
                             capacity=10000)
            shard.callRemote(Stats, connections=connections, capacity=10000,
                             status=b'{"accepting": true}')
            pump.flush()
            self.shards.append((shard, pump))

    def load(self) -> Settings:
        if isinstance(self.file, Exception):
            raise self.file
        return Settings.from_config(self.file)

    def stop(self) -> None:
        d = self.node.supervisor.stopService()
        self.flush()
        for process in self.reactor.processes:
            if not process.ended:
                process.end(signal=15)
        self.flush()
        self.successResultOf(d)

    def flush(self) -> None:
        for _, pump in self.shards:
            pump.flush()

    def health(self, dispatcher) -> tuple[int, dict]:
        proto = dispatcher.buildProtocol(None)
        transport = FdTransport(self)
        proto.makeConnection(transport)
        proto.dataReceived(get("/health"))
        r = Response(transport.value())
        return r.status, json.loads(r.body)

    def reload(self, **changes) -> None:
        self.file = self.started.replace(**changes)
        self.node.reload()
        self.flush()

    def test_health_503_after_max_connections_cut(self):
        """
        After a reload cuts limits.max_connections below the node's 201
        connections, /health answers 503 "full" on the public listener (it
        answered 200 "ok" before), and odinws_ready says 0.
        """
        self.assertEqual(self.health(self.public)[0], 200)
        self.reload(limits__max_connections=150)
        status, document = self.health(self.public)
        self.assertEqual((status, document["status"], document["connections"],
                          document["capacity"]), (503, "full", 201, 150))
        self.assertEqual(sample("odinws_ready"), 0)

    def test_admin_health_503_after_max_connections_cut(self):
        """The admin listener's /health tells the same after the reload: 503 "full"."""
        self.assertEqual(self.health(self.admin)[0], 200)
        self.reload(limits__max_connections=150)
        status, document = self.health(self.admin)
        self.assertEqual((status, document["status"], document["capacity"]),
                         (503, "full", 150))

    def test_reload_reaches_every_holder(self):
        """
        A reload hands one new Settings to both dispatchers (the admin one
        included), and the other holders take their part of it: the
        admission its per-IP rate, the guard its thresholds, the supervisor
        the configuration a shard restarted afterwards starts with.
        """
        self.reload(limits__max_connections=150, limits__connection_rate_per_ip=3.0,
                    limits__connection_burst_per_ip=4, guard__cpu_threshold=0.5)
        self.assertIs(self.public.settings, self.node.settings)
        self.assertIs(self.admin.settings, self.node.settings)
        self.assertEqual(self.admin.settings.limits.max_connections, 150)
        self.assertEqual(self.node.admission.rate, (3.0, 4))
        self.assertEqual(self.node.guard.cpu_threshold, 0.5)
        self.reactor.processes[0].end(code=1)
        self.reactor.advance(self.started["supervisor.restart_min_delay"])
        restarted = self.reactor.processes[-1]
        self.assertEqual(len(self.reactor.processes), 3)
        self.assertEqual(
            json.loads(restarted.written[SHARD_CONFIG_FD])["limits.max_connections"], 150)

    def test_reload_reaches_alive_shards(self):
        """Every alive shard gets the applied configuration (JSON) in a Reload."""
        self.reload(limits__max_connections=150)
        for shard, _ in self.shards:
            [blob] = shard.reloads
            self.assertEqual(json.loads(blob)["limits.max_connections"], 150)

    def test_restart_keys_wait(self):
        """A key that needs a restart keeps its old value after a reload."""
        before = self.started["listen.head_timeout"]
        self.reload(listen__head_timeout=before + 1, limits__max_connections=150)
        self.assertEqual(self.public.settings.listen.head_timeout, before)
        self.assertEqual(self.public.settings.limits.max_connections, 150)

    def test_refused_reload_changes_nothing(self):
        """A configuration the loader refuses leaves every holder's settings as they were."""
        settings = self.node.settings
        self.file = configmod.ConfigError("limits.max_connections: expected an integer")
        self.node.reload()
        self.assertIs(self.node.settings, settings)
        self.assertIs(self.admin.settings, settings)
        self.assertEqual(self.health(self.public)[0], 200)
