"""
The Schema Registry of the integration tests, as a process of its own on a
loopback port that L{RegistryProcess.down} and L{RegistryProcess.up} stop
and start again on the same URL with the same schemas:

  - L{RegistryProcess.apicurio}: Apicurio Registry (L{odinws_tools.apicurio}),
    a real registry, through its Confluent-compatible API; its schemas in an
    H2 database in the test's folder.
  - L{RegistryProcess.own}: odinws's own registry (L{odinws_tools.registry}),
    its schemas in a topic of the test's Kafka. Only for what Apicurio cannot
    serve to confluent-kafka's Python clients (Protobuf: see
    C{tests/integration/test_schema_registry.py}).
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from urllib.parse import urlsplit

from tests.helpers.node import ROOT, free_port


class RegistryProcess:
    """One registry process at a time, on one port."""

    def __init__(self, module: str, args: list[str], log_path: str, auth_file: str = ""):
        self.auth_file = auth_file
        self.port = free_port()
        self.url = ""
        self.log_path = log_path
        self._argv = [sys.executable, "-m", module, "--port", str(self.port), *args,
                      *(["--basic-auth-file", auth_file] if auth_file else [])]
        self.proc: subprocess.Popen | None = None

    @classmethod
    def apicurio(cls, directory: str, log_path: str, auth_file: str = "") -> RegistryProcess:
        """Apicurio Registry with its configuration and database in C{directory}."""
        return cls("odinws_tools.apicurio", ["--dir", directory], log_path, auth_file)

    @classmethod
    def own(cls, bootstrap: str, topic: str, log_path: str) -> RegistryProcess:
        """odinws's own registry, its schemas in C{topic} of the broker at C{bootstrap}."""
        return cls("odinws_tools.registry", ["--bootstrap", bootstrap, "--topic", topic],
                   log_path)

    def path(self, path: str) -> str:
        """The HTTP path of C{path} under the registry's API root."""
        return urlsplit(self.url).path + path

    def up(self, timeout: float = 240.0) -> None:
        """Start it; return once it printed its URL (it serves then)."""
        env = dict(os.environ)
        env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self._argv, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                         stderr=log, stdin=subprocess.DEVNULL)
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
        url = line.strip().decode()
        if not url.startswith(f"registry=http://127.0.0.1:{self.port}"):
            self.down()
            raise RuntimeError(f"the registry said {line!r}")
        self.url = url.removeprefix("registry=")

    def down(self) -> None:
        """Stop it (SIGTERM, then SIGKILL after 20 s)."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
