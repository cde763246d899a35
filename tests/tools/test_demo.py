"""
Tests for L{odinws_tools.demo}: its settings are valid odinws settings, and
C{python -m odinws_tools.demo} starts the stack, serves the page and leaves no
process behind when interrupted.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import yaml
from twisted.trial import unittest

from odin_ws.common import config as configmod
from odinws_tools.demo import demo_config
from odinws_tools.embedded_broker import free_port
from tests.helpers.node import (
    ROOT,  # the repository root
    descendants,
    pid_alive,
)


class DemoConfigTests(unittest.TestCase):
    def test_valid(self):
        """The demo's settings pass odinws's own validation and enable the page."""
        path = self.mktemp()
        with open(path, "w") as f:
            yaml.safe_dump(demo_config(3005, "127.0.0.1:9092", 2), f)
        cfg = configmod.load(path)
        self.assertTrue(cfg["demo.enabled"])
        self.assertEqual(cfg["listen.port"], "tcp:3005:interface=127.0.0.1")
        self.assertEqual(cfg["shards"], 2)


class DemoProgramTests(unittest.TestCase):
    def start_demo(self, *args: str) -> subprocess.Popen:
        env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        proc = subprocess.Popen(
            [sys.executable, "-m", "odinws_tools.demo", *args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=env, text=True)

        def stop() -> None:
            if proc.poll() is None:
                proc.kill()
        self.addCleanup(stop)
        return proc

    def read_until(self, proc: subprocess.Popen, marker: str) -> str:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if marker in line:
                break
        return "".join(lines)

    def assert_all_gone(self, pids: set[int]) -> None:
        deadline = time.monotonic() + 15
        while any(pid_alive(p) for p in pids):
            self.assertLess(time.monotonic(), deadline,
                            f"left behind: {[p for p in pids if pid_alive(p)]}")
            time.sleep(0.1)

    def test_runs_and_stops_cleanly(self):
        """
        C{python -m odinws_tools.demo} prints the page URL once everything is up;
        the page and /health answer; on SIGINT it exits 0, every process
        it started (broker, odinws and its shards, simulator) is gone, and
        the logs folder it printed is still there with odinws's log.
        """
        port = free_port()
        proc = self.start_demo("--port", str(port), "--shards", "2", "--tokens", "5",
                               "--rate", "20")
        output = self.read_until(proc, "Ctrl-C stops everything")
        self.assertIn(f"demo page:  http://127.0.0.1:{port}/", output)

        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as r:
            self.assertIn(b"app.js", r.read())
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as r:
            self.assertEqual(r.status, 200)
        started = descendants(proc.pid)
        # Broker, odinws parent, two shards, simulator (at least).
        self.assertGreaterEqual(len(started), 5, output)

        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
        self.assertEqual(proc.returncode, 0, output + rest)
        self.assert_all_gone(started)
        logs = re.search(r"logs:\s+(\S+)", output).group(1)
        self.assertIn(f"stopped; logs kept in {logs}", rest)
        self.addCleanup(shutil.rmtree, logs, True)
        with open(os.path.join(logs, "odinws.log")) as f:
            self.assertIn("shard 0: ", f.read())

    def test_interrupted_while_starting(self):
        """
        SIGINT while odinws is starting ends the wait at once: exit code
        130, and the broker and odinws processes are gone.
        """
        proc = self.start_demo("--port", str(free_port()), "--shards", "1")
        output = self.read_until(proc, "starting odinws")
        self.assertIn("starting odinws", output)
        started = descendants(proc.pid)
        self.assertTrue(started, "the broker should be running by now")
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
        self.assertEqual(proc.returncode, 130, output + rest)
        self.assert_all_gone(started)
        kept = re.search(r"logs kept in (\S+)", rest)
        self.assertIsNotNone(kept, rest)
        shutil.rmtree(kept.group(1), ignore_errors=True)

    def test_port_in_use(self):
        """A busy --port is reported in one line, exit code 2, nothing started."""
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            s.listen()
            port = s.getsockname()[1]
            env = dict(os.environ,
                       PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
            result = subprocess.run([sys.executable, "-m", "odinws_tools.demo", "--port", str(port)],
                                    capture_output=True, text=True, env=env, timeout=60)
        self.assertEqual(result.returncode, 2)
        self.assertIn(f"port {port} is in use; choose another: make demo PORT=<port>",
                      result.stdout)

    def test_make_demo_port(self):
        """C{make demo PORT=...} hands the port to the demo (a busy one is then refused)."""
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            s.listen()
            port = s.getsockname()[1]
            result = subprocess.run(["make", "-s", "demo", f"PORT={port}"], cwd=ROOT,
                                    capture_output=True, text=True, timeout=120)
        self.assertEqual(result.returncode, 2, result.stdout + result.stderr)
        self.assertIn(f"port {port} is in use", result.stdout)
