"""
Tests for L{odin_ws.common.launch} and the shard's options in L{odin_ws.tap}:
how a shard gets its configuration (a pipe, never its environment).
"""

from __future__ import annotations

import io
import os
import threading

from twisted.trial.unittest import SynchronousTestCase

from odin_ws.common import config as configmod
from odin_ws.common import launch
from odin_ws.tap import ShardOptions


class EnvironmentTests(SynchronousTestCase):
    def test_setting_overrides_dropped(self):
        """
        A shard's environment keeps the parent's ordinary variables but none
        of the ODINWS_<SECTION>_<KEY> setting overrides (they may hold secrets).
        """
        env = launch.shard_environment({"PATH": "/bin", "LANG": "C.UTF-8",
                                        "ODINWS_AUTH_SECRET": "s", "ODINWS_NODE_ID": "n"})
        self.assertEqual(env, {"PATH": "/bin", "LANG": "C.UTF-8"})

    def test_systemd_variables_dropped(self):
        """
        A shard does not inherit NOTIFY_SOCKET, WATCHDOG_USEC or
        WATCHDOG_PID: only the parent talks to systemd.
        """
        env = launch.shard_environment({"PATH": "/bin", "NOTIFY_SOCKET": "/run/systemd/notify",
                                        "WATCHDOG_USEC": "1", "WATCHDOG_PID": "2"})
        self.assertEqual(env, {"PATH": "/bin"})


class ConfigPipeTests(SynchronousTestCase):
    def pipe_with(self, data: bytes) -> int:
        """The read end of a pipe another thread writes C{data} to, then closes."""
        r, w = os.pipe()

        def write() -> None:
            with os.fdopen(w, "wb") as f:
                f.write(data)

        writer = threading.Thread(target=write)
        writer.start()
        self.addCleanup(writer.join)
        return r

    def test_read_to_the_end_and_closed(self):
        """The configuration is read to the end of the pipe (past one pipe buffer) and the fd closed."""
        text = '{"node_id": "' + "x" * 200_000 + '"}'
        fd = self.pipe_with(text.encode())
        self.assertEqual(launch.read_config(fd), text)
        self.assertRaises(OSError, os.fstat, fd)

    def test_shard_options(self):
        """The shard's options read the configuration from --config-fd."""
        cfg = configmod.load(None, environ={}).replace(limits__max_connections_per_shard=777)
        fd = self.pipe_with(cfg.to_json().encode())
        options = ShardOptions()
        options.parseOptions(["--index", "1", "--config-fd", str(fd)])
        self.assertEqual(options.settings.limits.max_connections_per_shard, 777)

    def test_not_started_by_the_parent(self):
        """Without the pipe the shard stops with status 2 and one line saying who starts it."""
        r = 987
        self.assertRaises(OSError, os.fstat, r)  # not open: nothing of the test's is read
        stderr = io.StringIO()
        self.patch(launch.sys, "stderr", stderr)
        options = ShardOptions()
        e = self.assertRaises(SystemExit, options.parseOptions,
                              ["--index", "0", "--config-fd", str(r)])
        self.assertEqual(e.code, 2)
        self.assertIn("started by the odinws parent", stderr.getvalue())
        self.assertEqual(stderr.getvalue().count("\n"), 1)
