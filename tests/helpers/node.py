"""
Integration-test helpers: run the real C{twistd -n odinws} process against
the test broker, and talk to it with real clients from another library
(C{websockets}, not Autobahn). Everything waits by polling with a deadline.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from typing import Any

import yaml
from websockets.sync.client import connect

from odin_ws.common.launch import twistd_argv
from odinws_tools.embedded_broker import free_port

#: The repository's root.
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def descendants(pid: int) -> set[int]:
    """Live (non-zombie) descendants of C{pid}, from /proc."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # The command name may hold spaces; the fields after ")" do not.
        state, ppid = stat.rpartition(")")[2].split()[:2]
        if state != "Z":
            children.setdefault(int(ppid), []).append(int(name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def wait_for(predicate, timeout: float = 30.0, interval: float = 0.05, what: str = "condition"):
    """Poll C{predicate} until it returns something truthy; fail after C{timeout}."""
    deadline = time.monotonic() + timeout
    last_error = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except Exception as e:  # noqa: BLE001 - retried until the deadline
            last_error = e
            value = None
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}"
                         + (f" (last error: {last_error!r})" if last_error else ""))


def http_get(port: int, path: str, timeout: float = 5.0) -> tuple[int, dict, bytes]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def node_metric(node: Node, name: str, *parts: str) -> float:
    """
    The sum over the node's shards of the samples of C{name} in its
    /metrics whose line has every one of C{parts} (label texts such as
    C{'status="400"'}).
    """
    _, _, body = http_get(node.port, "/metrics")
    total = 0.0
    for line in body.decode().splitlines():
        if line.startswith(name) and line[len(name)] in "{ " and all(p in line for p in parts):
            total += float(line.rsplit(" ", 1)[1])
    return total


def metric_lines(node: Node, *prefixes: str) -> list[str]:
    """The node's /metrics sample lines whose name starts with one of C{prefixes} (for messages)."""
    _, _, body = http_get(node.port, "/metrics")
    return [line for line in body.decode().splitlines() if line.startswith(prefixes)]


class Node:
    """A real odinws parent process (and its shards) on a free loopback port."""

    def __init__(self, workdir: str, brokers: str, shards: int = 1, settings: dict | None = None,
                 extra_args: list[str] | None = None, env: dict | None = None,
                 port: int | None = None):
        # A given port: a node that replaces another on its address.
        self.port = port or free_port()
        self.workdir = workdir
        self.node_id = f"test{self.port}"
        config: dict[str, Any] = {
            "node_id": self.node_id,
            "shards": shards,
            # The tests read /metrics on the public port (off by default).
            # No admin listener unless a test asks for one: its default port
            # is the same for every node on the host.
            "listen": {"port": f"tcp:{self.port}:interface=127.0.0.1", "public_metrics": True,
                       "admin_port": ""},
            "kafka": {"brokers": brokers},
            "supervisor": {"stats_interval": 0.2, "restart_min_delay": 0.2},
        }
        for key, value in (settings or {}).items():
            section, _, name = key.rpartition(".")
            (config.setdefault(section, {}) if section else config)[name] = value
        fd, self.config_path = tempfile.mkstemp(suffix=".yaml", dir=workdir)
        with os.fdopen(fd, "w") as f:
            yaml.safe_dump(config, f)
        self.log_path = os.path.join(workdir, f"odinws-{self.port}.log")
        self.args = extra_args or []
        self.env = env
        self.proc: subprocess.Popen | None = None

    def start(self, wait_ready: bool = True) -> Node:
        env = dict(os.environ)
        env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
        env.update(self.env or {})
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            twistd_argv("--nodaemon", "--pidfile=", "odinws", "--config",
                        self.config_path, *self.args),
            cwd=self.workdir, env=env, stdout=self.log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL)
        if wait_ready:
            self.wait_ready()
        return self

    def health(self) -> tuple[int, dict]:
        status, _, body = http_get(self.port, "/health")
        return status, json.loads(body)

    def wait_ready(self, timeout: float = 60.0, assigned: bool = True) -> dict:
        """Wait until every shard is alive and (optionally) Kafka has assigned partitions."""
        def ready():
            if self.proc.poll() is not None:
                raise AssertionError(f"odinws exited with {self.proc.returncode}: {self.tail()}")
            status, body = self.health()
            if status != 200 or body["shards_alive"] != body["shards_total"]:
                return None
            if assigned:
                got = sum(len((s.get("kafka") or {}).get("assigned") or []) for s in body["shards"])
                if got == 0:
                    return None
            return body
        return wait_for(ready, timeout, 0.2, "odinws ready")

    def wait_spread(self, timeout: float = 60.0) -> None:
        """
        Wait until every shard has partitions (give the topic at least as
        many as shards). Apache Kafka gives a group's first member every
        partition, and the later ones their share a rebalance after (seconds).
        """
        wait_for(lambda: all((s.get("kafka") or {}).get("assigned")
                             for s in self.health()[1]["shards"]),
                 timeout, 0.2, "partitions on every shard")

    def tail(self, n: int = 4000) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return f.read()[-n:].decode("utf-8", "replace")
        except OSError:
            return ""

    def assigned(self) -> dict[int, list[int]]:
        """The Kafka partitions each shard (by index) has, from /health."""
        out = {}
        for s in self.health()[1]["shards"]:
            names = (s.get("kafka") or {}).get("assigned") or []
            out[s["index"]] = sorted(int(n.rpartition("[")[2].rstrip("]")) for n in names)
        return out

    def split(self, counts: list[int]) -> bool:
        """Whether the shards have C{counts} partitions each (in any order)."""
        return sorted(map(len, self.assigned().values())) == sorted(counts)

    def shard_pids(self) -> list[int]:
        return [s["pid"] for s in self.health()[1]["shards"] if s["alive"]]

    def kill_holder(self) -> int:
        """SIGKILL the one shard holding a connection (once exactly one does); its pid."""
        def holder():
            held = [s["pid"] for s in self.health()[1]["shards"]
                    if s["alive"] and s["connections"] > 0]
            return held[0] if len(held) == 1 else None
        victim = wait_for(holder, 30, 0.05, "the one shard holding a connection")
        os.kill(victim, signal.SIGKILL)
        return victim

    def url(self, path: str = "/ws") -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM the parent; wait for it; kill it (by pid) only if it hangs."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise AssertionError(
                f"odinws did not stop within {timeout}s: {self.tail()}") from None
        finally:
            self.log.close()


class AdminNode(Node):
    """A node whose public port speaks TLS: /health is asked on the admin port."""

    def __init__(self, workdir, brokers, shards=1, settings=None, **kw):
        self.admin_port = free_port()
        settings = dict(settings or {})
        settings["listen.admin_port"] = f"tcp:{self.admin_port}:interface=127.0.0.1"
        super().__init__(workdir, brokers, shards=shards, settings=settings, **kw)

    def health(self):
        status, _, body = http_get(self.admin_port, "/health")
        return status, json.loads(body)

    def url(self, path: str = "/ws") -> str:
        return f"wss://127.0.0.1:{self.port}{path}"


class Client:
    """A WebSocket client (the C{websockets} library) with JSON helpers."""

    def __init__(self, url: str, **kw):
        # max_queue=None: the client's reader thread never stops reading (so it
        # answers pings and sees close frames) even when the test reads late.
        kw.setdefault("max_queue", None)
        self.ws = connect(url, open_timeout=10, max_size=None, **kw)
        self.events: list[dict] = []

    def send(self, obj) -> None:
        self.ws.send(json.dumps(obj))

    def recv(self, timeout: float = 10.0) -> dict:
        return json.loads(self.ws.recv(timeout))

    def request(self, obj, timeout: float = 10.0) -> dict:
        """Send a message and return the first non-event reply (events are kept)."""
        self.send(obj)
        deadline = time.monotonic() + timeout
        while True:
            msg = self.recv(max(0.01, deadline - time.monotonic()))
            if msg.get("type") == "event":
                self.events.append(msg)
            else:
                return msg

    def subscribe(self, *channels: str) -> dict:
        reply = self.request({"type": "subscribe", "channels": list(channels), "id": "s"})
        assert reply["type"] == "subscribed", reply
        return reply

    def collect(self, count: int, timeout: float = 20.0) -> list[dict]:
        """Receive until C{count} events have arrived in total."""
        deadline = time.monotonic() + timeout
        while len(self.events) < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"got {len(self.events)} of {count} events")
            try:
                msg = self.recv(remaining)
            except TimeoutError:
                continue
            if msg.get("type") == "event":
                self.events.append(msg)
        return self.events

    def close(self) -> None:
        self.ws.close()

