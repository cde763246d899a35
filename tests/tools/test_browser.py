"""
The demo page in a real browser: headless Debian Chromium driven by
Playwright (C{playwright-core} from npm, C{tests/browser/}) against the
demo stack of L{odinws_tools.demo} (Tansu broker, odinws with 2 shards, the
simulator). The screenshot goes to C{artifacts/demo.png}.
"""

from __future__ import annotations

import os
import queue
import shutil
import subprocess
import threading
import time

from twisted.trial import unittest

from odinws_tools.demo import DemoStack
from odinws_tools.embedded_broker import free_port
from tests.helpers.node import ROOT  # the repository root

BROWSER_DIR = os.path.join(ROOT, "tests", "browser")
CHROMIUM = "/usr/bin/chromium"
SCREENSHOT = os.path.join(ROOT, "artifacts", "demo.png")
RECONNECT_SCREENSHOT = os.path.join(ROOT, "artifacts", "demo-reconnect.png")


def _node_modules_ready() -> bool:
    return os.path.isdir(os.path.join(BROWSER_DIR, "node_modules", "playwright-core"))


class DemoPageTests(unittest.TestCase):
    def setUp(self):
        node = shutil.which("node")
        if not os.access(CHROMIUM, os.X_OK) or node is None:
            raise unittest.SkipTest(
                f"needs {CHROMIUM} and node (apt-get install chromium nodejs); "
                f"found chromium: {os.access(CHROMIUM, os.X_OK)}, node: {node}")
        self.node = node
        if not _node_modules_ready():
            # .ci/run installs these first; a developer's first run installs
            # them here, from package-lock.json, as CI does.
            result = subprocess.run(
                ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=BROWSER_DIR,
                capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
            self.assertEqual(result.returncode, 0, f"npm ci in {BROWSER_DIR} failed:\n"
                                                   + result.stdout + result.stderr)
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        self.stack = DemoStack(workdir, port=free_port(), kafka_port=0, shards=2,
                               rate=200, tokens=20)
        self.addCleanup(self.stack.stop)
        self.stack.start()

    def test_page_shows_live_events(self):
        """
        In headless Chromium the page connects, subscribes through its own
        controls (all trades with a channel pattern, then one token's prices
        with the token/type picker), fills rows from live events of the real
        server, draws sparklines and keeps the status at connected; the
        screenshot is saved.
        """
        if os.path.exists(SCREENSHOT):
            os.remove(SCREENSHOT)
        try:
            result = subprocess.run(
                [self.node, os.path.join(BROWSER_DIR, "demo.test.mjs"),
                 self.stack.base_url + "/", SCREENSHOT],
                cwd=BROWSER_DIR, capture_output=True, text=True, timeout=300,
                stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as e:
            self.fail(f"the browser check did not finish: {e.stdout}{e.stderr}")
        self.assertEqual(result.returncode, 0,
                         f"browser check failed:\n{result.stdout}{result.stderr}\n"
                         f"odinws log tail:\n{self.stack.tail(self.stack.server_log)}")
        with open(SCREENSHOT, "rb") as f:
            self.assertEqual(f.read(8), b"\x89PNG\r\n\x1a\n")

    def test_reconnects_after_server_restart(self):
        """
        When odinws restarts under it, the page shows it lost the connection,
        reconnects on its own (backoff), subscribes again and shows events
        again, keeping its rows.
        """
        proc = subprocess.Popen(
            [self.node, os.path.join(BROWSER_DIR, "demo.test.mjs"), self.stack.base_url + "/",
             RECONNECT_SCREENSHOT, "--reconnect"],
            cwd=BROWSER_DIR, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            stdin=subprocess.DEVNULL)
        self.addCleanup(lambda: proc.poll() is None and proc.kill())
        lines: queue.Queue = queue.Queue()
        # A reader thread: a blocking readline cannot honour a deadline.
        threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout] + [lines.put(None)],
                         daemon=True).start()
        seen = []
        deadline = time.monotonic() + 120
        while not seen or seen[-1] != "READY\n":
            try:
                line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                line = None
            if line is None:
                proc.kill()
                self.fail("the page never got ready:\n" + "".join(seen) + proc.stderr.read())
            seen.append(line)

        self.stack.restart_server()
        try:
            proc.wait(timeout=300)
        except subprocess.TimeoutExpired:
            proc.kill()
        while (line := lines.get(timeout=10)) is not None:
            seen.append(line)
        self.assertEqual(proc.returncode, 0, "reconnect check failed:\n" + "".join(seen)
                         + proc.stderr.read())
