"""
C{python -m odinws_tools.demo} (what C{make demo} runs): an embedded Kafka broker,
odinws with the demo page, and the event simulator, on this machine only.

It starts the Tansu broker (port 9092 if free, else any free port), creates
the topics, writes a temporary config, starts C{twistd -n odinws}, waits
until C{/health} is ok and every partition is assigned, starts
C{odinws-simulate}, prints the URLs and runs until Ctrl-C / SIGTERM (or
C{--duration}). Then it stops what it started, by pid, in reverse order,
each with a bounded wait before a kill. Every child also gets SIGTERM from
the kernel if this process dies without cleaning up (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import TextIO

import yaml

from odin_ws.common.launch import twistd_argv
from odinws_tools.embedded_broker import EmbeddedBroker, die_with_parent, port_is_free, stop_process
from odinws_tools.simulate import DEFAULT_TOPICS

#: The directory holding the C{odin_ws} package (and, in a source tree,
#: C{twisted/plugins/}): children get it on PYTHONPATH so they run this code.
SOURCE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
READY_TIMEOUT = 90.0
SERVER_STOP_WAIT = 20.0
SIMULATOR_STOP_WAIT = 10.0


def demo_config(http_port: int, brokers: str, shards: int, node_id: str = "demo") -> dict:
    """The odinws settings of the demo (a YAML document as a dict)."""
    return {
        "node_id": node_id,
        "shards": shards,
        # The page links /metrics on the same port (off by default in odinws).
        # No admin listener: its default port is fixed, and the demo may run
        # beside an installed odinws or on another port (make demo PORT=...).
        "listen": {"port": f"tcp:{http_port}:interface=127.0.0.1", "public_metrics": True,
                   "admin_port": ""},
        "kafka": {"brokers": brokers, "topics": {t: k for k, t in DEFAULT_TOPICS.items()},
                  # Small timeouts: the consumer group forms in seconds.
                  "session_timeout_ms": 3000, "max_poll_interval_ms": 4000,
                  # Tansu 0.6 never assigns a second static member (measured).
                  "static_membership": False},
        "demo": {"enabled": True},
        # The demo shares a laptop with a browser and the simulator: do not
        # refuse the page's connection because the machine is busy.
        "guard": {"cpu_threshold": 0, "memory_threshold": 0},
        # Ctrl-C should not wait out a production-sized drain.
        "supervisor": {"drain_timeout": 1.0, "kill_timeout": 3.0},
    }


class Interrupted(Exception):
    """Start-up was cancelled (Ctrl-C / SIGTERM while waiting)."""


class DemoStack:
    """
    Broker + odinws + simulator, started and stopped together.

    @param workdir: where the config and the logs go.
    @param port: public port of odinws (page, /ws, /health, /metrics).
    @param kafka_port: broker port; C{None}: 9092 if free, else any free port;
        0: any free port.
    @param say: progress messages (one line each).
    @param cancel: set by a signal handler: L{start} gives up waiting and
        raises L{Interrupted}.
    @param settings: dotted config keys (C{"limits.max_connections"}) set on
        top of L{demo_config} (C{make capacity} raises the limits this way).
    @param avro: the simulator writes Avro through a local Schema Registry
        (Apicurio Registry, L{odinws_tools.apicurio}) and odinws decodes it
        (C{--avro}).
    """

    def __init__(self, workdir: str, port: int = 3005, kafka_port: int | None = None,
                 shards: int = 2, rate: int = 200, tokens: int = 100, partitions: int = 3,
                 say: Callable[[str], None] = lambda line: None,
                 cancel: threading.Event | None = None, settings: dict | None = None,
                 avro: bool = False):
        self.workdir = workdir
        self.avro = avro
        self.registry: subprocess.Popen | None = None
        self.registry_log = os.path.join(workdir, "registry.log")
        self.settings = dict(settings or {})
        self.port = port
        self.kafka_port = kafka_port
        self.shards = shards
        self.rate = rate
        self.tokens = tokens
        self.partitions = partitions
        self.say = say
        self.cancel = cancel or threading.Event()
        self.broker = EmbeddedBroker(log_dir=workdir)
        self.server: subprocess.Popen | None = None
        self.simulator: subprocess.Popen | None = None
        self.restarts = 0
        self.server_log = os.path.join(workdir, "odinws.log")
        self.simulator_log = os.path.join(workdir, "simulate.log")
        self.config_path = os.path.join(workdir, "odinws.yaml")

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _spawn(self, argv: list[str], log_path: str) -> subprocess.Popen:
        env = dict(os.environ)
        env["PYTHONPATH"] = SOURCE_ROOT + os.pathsep + env.get("PYTHONPATH", "")
        on_main = threading.current_thread() is threading.main_thread()
        with open(log_path, "ab") as log:
            # Own process group: Ctrl-C reaches only us, and we stop the
            # children in order (simulator, server, broker).
            return subprocess.Popen(argv, cwd=self.workdir, env=env, stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=subprocess.STDOUT, process_group=0,
                                    preexec_fn=die_with_parent if on_main else None)

    def start(self) -> None:
        """Start everything; on failure stop what started and raise RuntimeError."""
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        self.say("starting the Kafka broker (Tansu, in memory)")
        if self.kafka_port is None and port_is_free(9092):
            try:
                self.broker.start(9092)
            except RuntimeError:
                # Taken between the check and the start: any port will do.
                self.broker.start(0)
        else:
            self.broker.start(self.kafka_port or 0)
        self._check_cancel()
        self.broker.create_topics(DEFAULT_TOPICS.values(), self.partitions)
        self.say(f"  broker at {self.broker.bootstrap}; topics {', '.join(DEFAULT_TOPICS.values())} "
                 f"({self.partitions} partitions each)")

        avro_args: list[str] = []
        if self.avro:
            url = self._start_registry()
            self.settings["schema_registry.url"] = url
            self.settings["kafka.topic_options"] = {t: {"format": "avro"}
                                                    for t in DEFAULT_TOPICS.values()}
            avro_args = ["--registry", url]

        self.say(f"starting odinws with {self.shards} shards on port {self.port}")
        self._start_server("demo")

        self.say(f"starting the simulator: {self.tokens} tokens, up to {self.rate} events/s"
                 + (", Avro values" if self.avro else ""))
        self.simulator = self._spawn(
            [sys.executable, "-m", "odinws_tools.simulate", "--brokers", self.broker.bootstrap,
             "--rate", str(self.rate), "--tokens", str(self.tokens), *avro_args],
            self.simulator_log)

    def _start_registry(self) -> str:
        """Start the local Schema Registry; its URL once it serves."""
        self.say("starting the Schema Registry (Apicurio Registry, odinws_tools.apicurio)")
        self.registry = self._spawn([sys.executable, "-m", "odinws_tools.apicurio",
                                     "--dir", os.path.join(self.workdir, "registry")],
                                    self.registry_log)
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            self._check_cancel()
            for line in self.tail(self.registry_log).splitlines():
                if line.startswith("registry="):
                    self.say(f"  registry at {line.removeprefix('registry=')}")
                    return line.removeprefix("registry=")
            if self.registry.poll() is not None:
                break
            self.cancel.wait(0.1)
        raise RuntimeError("the Schema Registry did not start:\n" + self.tail(self.registry_log))

    def _start_server(self, node_id: str) -> None:
        config = demo_config(self.port, self.broker.bootstrap, self.shards, node_id)
        for key, value in self.settings.items():
            *sections, name = key.split(".")
            target = config
            for section in sections:
                target = target.setdefault(section, {})
            target[name] = value
        with open(self.config_path, "w") as f:
            yaml.safe_dump(config, f)
        self.server = self._spawn(
            twistd_argv("--nodaemon", "--pidfile=", "odinws", "--config", self.config_path),
            self.server_log)
        self.wait_ready()
        self._check_cancel()

    def restart_server(self) -> None:
        """Stop odinws (SIGTERM: clients are told to reconnect) and start it again."""
        stop_process(self.server, SERVER_STOP_WAIT)
        self.restarts += 1
        # A new node id, so a new consumer group: Tansu 0.6.0 sometimes never
        # assigns partitions when two members re-form a group whose members
        # just left (one member, or a fresh group, always works; measured).
        self._start_server(f"demo-r{self.restarts}")

    def _check_cancel(self) -> None:
        if self.cancel.is_set():
            raise Interrupted("interrupted")

    def health(self) -> tuple[int, dict]:
        """GET /health: (HTTP status, document)."""
        try:
            with urllib.request.urlopen(self.base_url + "/health", timeout=5) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> dict:
        """Wait until /health is ok and every topic partition is assigned to a shard."""
        want = len(DEFAULT_TOPICS) * self.partitions
        deadline = time.monotonic() + timeout
        state = "no answer"
        while time.monotonic() < deadline:
            self._check_cancel()
            server = self.server
            if server is None:
                raise RuntimeError("odinws is not started")
            if server.poll() is not None:
                raise RuntimeError(f"odinws exited with code {server.returncode}:\n"
                                   + self.tail(self.server_log))
            try:
                status, body = self.health()
            except (OSError, ValueError) as e:
                state = f"no answer ({e})"
            else:
                assigned = sum(len((s.get("kafka") or {}).get("assigned") or [])
                               for s in body.get("shards", []))
                state = f"status {body.get('status')}, {assigned}/{want} partitions assigned"
                if status == 200 and assigned >= want:
                    return body
            self.cancel.wait(0.25)
        raise RuntimeError(f"odinws not ready after {timeout:g}s: {state}\n"
                           + self.tail(self.server_log))

    def failed(self) -> str | None:
        """A line naming a child that died on its own, or None."""
        for name, proc, log in (("odinws", self.server, self.server_log),
                                ("simulator", self.simulator, self.simulator_log)):
            if proc is not None and proc.poll() is not None:
                return f"{name} exited with code {proc.returncode}:\n{self.tail(log)}"
        return None

    @staticmethod
    def tail(path: str, size: int = 3000) -> str:
        try:
            with open(path, "rb") as f:
                f.seek(max(0, os.path.getsize(path) - size))
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def stop(self) -> None:
        """Stop the simulator, odinws and the broker, each with a bounded wait."""
        stop_process(self.simulator, SIMULATOR_STOP_WAIT)
        stop_process(self.server, SERVER_STOP_WAIT)
        stop_process(self.registry, SIMULATOR_STOP_WAIT)
        self.broker.stop()


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m odinws_tools.demo",
        description="Run odinws with its demo page, an embedded Kafka broker and the "
                    "event simulator on this machine (127.0.0.1 only). Ctrl-C stops it all.")
    p.add_argument("--port", type=int, default=3005, help="odinws port (page, /ws, /health)")
    p.add_argument("--rate", type=int, default=200, help="simulator ceiling, events/s")
    p.add_argument("--tokens", type=int, default=100, help="simulated tokens")
    p.add_argument("--shards", type=int, default=2, help="odinws shard processes")
    p.add_argument("--duration", type=float, default=0.0,
                   help="stop after this many seconds (0: run until Ctrl-C)")
    p.add_argument("--avro", action="store_true",
                   help="the simulator writes Avro through a local Schema Registry and odinws "
                        "decodes it (docs/operations.md, \"Value formats\"); default JSON")
    args = p.parse_args(argv)
    for name in ("port", "rate", "tokens", "shards"):
        if getattr(args, name) < 1:
            p.error(f"--{name}: must be at least 1")
    return args


def main(argv: list[str] | None = None, out: TextIO = sys.stdout) -> int:
    args = _arguments(argv)

    def say(line: str) -> None:
        print(line, file=out, flush=True)

    if not port_is_free(args.port):
        say(f"odinws demo: port {args.port} is in use; choose another: make demo PORT=<port> "
            "(or --port)")
        return 2
    stopping = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stopping.set())

    workdir = tempfile.mkdtemp(prefix="odinws-demo-")
    stack = DemoStack(workdir, port=args.port, shards=args.shards, rate=args.rate,
                      tokens=args.tokens, say=say, cancel=stopping, avro=args.avro)
    try:
        stack.start()
    except Interrupted:
        say(f"stopped; logs kept in {workdir}")
        return 130
    except Exception as e:  # noqa: BLE001 - reported with the logs' place, then exit
        say(f"odinws demo: could not start: {e}\nlogs: {workdir}")
        return 1
    url = stack.base_url
    say(f"\n  demo page:  {url}/\n  WebSocket:  ws://127.0.0.1:{args.port}/ws\n"
        f"  health:     {url}/health\n  metrics:    {url}/metrics\n"
        f"  Kafka:      {stack.broker.bootstrap}\n  logs:       {workdir}\n\nCtrl-C stops everything.")

    deadline = time.monotonic() + args.duration if args.duration else None
    problem = None
    while not stopping.wait(0.5):
        problem = stack.failed()
        if problem or (deadline is not None and time.monotonic() >= deadline):
            break
    say("stopping...")
    stack.stop()
    if problem:
        say(f"odinws demo: {problem}\nlogs: {workdir}")
        return 1
    # The folder printed at the start stays: its logs are read after a run.
    say(f"stopped; logs kept in {workdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
