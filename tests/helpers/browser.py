"""
Running the headless-Chromium checks of C{tests/browser/} (Node scripts on
C{playwright-core}, with Debian's C{/usr/bin/chromium}): skip when the browser
or Node is missing, install the npm packages on a developer's first run, and
read a script's output line by line with deadlines (a blocking readline
cannot honour one).
"""

from __future__ import annotations

import os
import queue
import shutil
import subprocess
import threading
import time

from twisted.trial import unittest

from tests.helpers.node import ROOT

BROWSER_DIR = os.path.join(ROOT, "tests", "browser")
CHROMIUM = "/usr/bin/chromium"


def require_browser() -> str:
    """The C{node} executable, once Chromium and the npm packages are there; else SkipTest."""
    node = shutil.which("node")
    if not os.access(CHROMIUM, os.X_OK) or node is None:
        raise unittest.SkipTest(
            f"needs {CHROMIUM} and node (apt-get install chromium nodejs); "
            f"found chromium: {os.access(CHROMIUM, os.X_OK)}, node: {node}")
    if not os.path.isdir(os.path.join(BROWSER_DIR, "node_modules", "playwright-core")):
        # .ci/run installs these first; a developer's first run does it here, as CI does.
        result = subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=BROWSER_DIR,
            capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL, check=False)
        if result.returncode:
            raise AssertionError(f"npm ci in {BROWSER_DIR} failed:\n{result.stdout}{result.stderr}")
    return node


class BrowserScript:
    """One C{node tests/browser/<script>} run; its stdout lines as they come."""

    def __init__(self, node: str, script: str, *args: str):
        self.proc = subprocess.Popen(
            [node, os.path.join(BROWSER_DIR, script), *args], cwd=BROWSER_DIR,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
        self.lines: list[str] = []
        self._queue: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self._queue.put(line)
        self._queue.put(None)

    def _next(self, deadline: float) -> str | None:
        try:
            line = self._queue.get(timeout=max(0.1, deadline - time.monotonic()))
        except queue.Empty:
            return None
        if line is not None:
            self.lines.append(line)
        return line

    def wait_line(self, text: str, timeout: float) -> None:
        """Read until a line reading C{text}; fail (killing the script) if it ends or times out."""
        deadline = time.monotonic() + timeout
        while not self.lines or self.lines[-1].strip() != text:
            if self._next(deadline) is None:
                self.kill()
                raise AssertionError(f"no {text!r} from the browser script:\n{self.output()}")

    def finish(self, timeout: float) -> int:
        """Wait for the script to exit (killing it after C{timeout}); its exit status."""
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
        deadline = time.monotonic() + 10
        while self._next(deadline) is not None:
            pass
        return self.proc.returncode

    def output(self) -> str:
        return "".join(self.lines) + (self.proc.stderr.read() if self.proc.poll() is not None else "")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
