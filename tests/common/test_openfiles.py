"""
Tests for L{odin_ws.common.openfiles}: what the configured limits need, the
soft limit raised toward it (never past the hard limit, never lowered), and
the cap the hard limit puts on connections, as the parent logs it and
/health shows it.
"""

from __future__ import annotations

import resource

from twisted.trial.unittest import SynchronousTestCase

from odin_ws.common import config as configmod
from odin_ws.common import openfiles
from odin_ws.common.settings import Settings
from odin_ws.parent.health import Health


def settings(**overrides) -> Settings:
    return Settings.from_config(configmod.load(None, environ={}).replace(**overrides))


class Limits:
    """
    A fake getrlimit/setrlimit pair; setrlimit may refuse, and refuses to
    raise the hard limit unless C{privileged} (CAP_SYS_RESOURCE), as Linux does.
    """

    def __init__(self, soft: int, hard: int, refuse: bool = False, privileged: bool = False):
        self.soft, self.hard, self.refuse, self.privileged = soft, hard, refuse, privileged

    def get(self, which):
        return self.soft, self.hard

    def set(self, which, value):
        if self.refuse or (value[1] > self.hard and not self.privileged):
            raise ValueError("not allowed to raise maximum limit")
        self.soft, self.hard = value


class NeededTests(SynchronousTestCase):
    def test_shard_connections_plus_headroom(self):
        """A process needs the connections one shard may hold plus the headroom."""
        s = settings(**{"shards": 2, "limits.max_connections": 40000,
                        "limits.max_connections_per_shard": 20000})
        self.assertEqual(openfiles.needed(s), 20000 + openfiles.HEADROOM)

    def test_parent_heads_when_larger(self):
        """With few connections per shard, the parent's heads and handoffs decide."""
        s = settings(**{"shards": 2, "limits.max_connections": 100,
                        "limits.max_connections_per_shard": 100, "listen.max_heads": 4096})
        self.assertEqual(openfiles.needed(s), 4096 + 64 * 2 + openfiles.HEADROOM)


class EnsureTests(SynchronousTestCase):
    def test_raised_to_need(self):
        """The soft limit goes up to what is needed, not further."""
        lim = Limits(1024, 100000)
        self.assertEqual(openfiles.ensure(30000, lim.get, lim.set), (30000, 100000))

    def test_capped_by_hard(self):
        """Above the hard limit, the soft limit stops at the hard one."""
        lim = Limits(1024, 20000)
        self.assertEqual(openfiles.ensure(30000, lim.get, lim.set), (20000, 20000))

    def test_hard_raised_when_privileged(self):
        """With CAP_SYS_RESOURCE the hard limit is raised to the need, no further."""
        lim = Limits(1024, 20000, privileged=True)
        self.assertEqual(openfiles.ensure(30000, lim.get, lim.set, lambda: 1 << 20),
                         (30000, 30000))

    def test_hard_raise_stops_at_nr_open(self):
        """The kernel's fs.nr_open bounds the raised hard limit."""
        lim = Limits(1024, 20000, privileged=True)
        self.assertEqual(openfiles.ensure(30000, lim.get, lim.set, lambda: 25000),
                         (25000, 25000))

    def test_never_lowered(self):
        """A soft limit already above the need stays."""
        lim = Limits(50000, 100000)
        self.assertEqual(openfiles.ensure(30000, lim.get, lim.set), (50000, 100000))

    def test_refused(self):
        """If the kernel refuses, the limit is reported as it is."""
        lim = Limits(1024, 100000, refuse=True)
        self.assertEqual(openfiles.ensure(30000, lim.get, lim.set), (1024, 100000))


class StatusTests(SynchronousTestCase):
    def test_capped_by_hard_limit(self):
        """
        A hard limit of 20,000 with 2 shards cannot hold 40,000 connections:
        capped at 2 x (20,000 - headroom), and the message says what to raise.
        """
        s = settings(**{"shards": 2, "limits.max_connections": 40000,
                        "limits.max_connections_per_shard": 20000})
        files = openfiles.status(s, Limits(20000, 20000).get)
        self.assertTrue(files.capped)
        self.assertEqual(files.allowed, 2 * (20000 - openfiles.HEADROOM))
        self.assertIn("caps connections at 39488 of limits.max_connections 40000",
                      files.message())
        self.assertIn("LimitNOFILE", files.message())

    def test_not_capped(self):
        """With room for every shard's connections, the configuration decides."""
        s = settings(**{"shards": 3, "limits.max_connections": 40000,
                        "limits.max_connections_per_shard": 15000})
        files = openfiles.status(s, Limits(20000, 20000).get)
        self.assertFalse(files.capped)
        self.assertEqual(files.allowed, 40000)


class HealthTests(SynchronousTestCase):
    def test_health_shows_the_cap(self):
        """/health says when the open-files limit caps max_connections."""
        before = resource.getrlimit(resource.RLIMIT_NOFILE)
        self.addCleanup(resource.setrlimit, resource.RLIMIT_NOFILE, before)
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(1024, before[1]), before[1]))
        soft = min(1024, before[1])

        class Door:
            accepting, starting, overloaded = True, False, False

        s = settings(**{"shards": 2, "limits.max_connections": 18000,
                        "limits.max_connections_per_shard": 10000})
        _, body = Health(s, lambda: [], Door())()
        files = body["open_files"]
        self.assertTrue(files["capped"])
        self.assertEqual(files["connections_allowed"], 2 * (soft - openfiles.HEADROOM))
        self.assertEqual(files["max_connections"], 18000)
