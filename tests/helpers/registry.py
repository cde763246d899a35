"""
The Schema Registry of the integration tests: C{python -m odinws_tools.registry}
as a process of its own on a loopback port, its schemas kept in a topic of
the test's Kafka, so that L{RegistryProcess.down} and L{RegistryProcess.up}
stop it and start it again on the same URL with the same schemas.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time

from tests.helpers.node import ROOT, free_port


class RegistryProcess:
    """One registry process at a time, on one port."""

    def __init__(self, bootstrap: str, topic: str, log_path: str, auth_file: str = ""):
        self.auth_file = auth_file
        self.bootstrap = bootstrap
        self.topic = topic
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    def up(self, timeout: float = 60.0) -> None:
        """Start it; return once it printed its URL (it serves then)."""
        env = dict(os.environ)
        env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "odinws_tools.registry", "--port", str(self.port),
                 "--bootstrap", self.bootstrap, "--topic", self.topic,
                 *(["--basic-auth-file", self.auth_file] if self.auth_file else [])],
                cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL)
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        line = b""
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None:
                self.down()
                raise RuntimeError(f"the registry did not start (see {self.log_path})")
            if select.select([self.proc.stdout], [], [], left)[0]:
                line += os.read(self.proc.stdout.fileno(), 1)
        if line.strip() != f"registry={self.url}".encode():
            self.down()
            raise RuntimeError(f"the registry said {line!r}")

    def down(self) -> None:
        """Stop it (SIGTERM, then SIGKILL after 10 s)."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
