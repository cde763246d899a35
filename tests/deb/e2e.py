"""
End-to-end check of the *installed* package (run by tests/deb/test-deb.sh
with the repo's .venv python, as root, after the .deb is installed): start
/opt/venvs/odinws/bin/twistd as the odinws user against a Tansu broker, as
the installed unit would (a notify socket and the unit's watchdog), wait
for READY=1 and /health, deliver one Kafka record to a WebSocket client,
stop with SIGTERM (STOPPING=1) and check the shards went too.

Prints one "ok: ..." or "not ok: ..." line per check (the shell script
counts them) and exits non-zero if any failed.
"""

from __future__ import annotations

import configparser
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

# E402: after ROOT is on sys.path (the package test runs this file by its path).
import yaml  # noqa: E402

from tests.helpers.broker import TansuBroker  # noqa: E402
from tests.helpers.node import Client, free_port, http_get, wait_for  # noqa: E402
from tests.helpers.opsfiles import (  # noqa: E402
    DASHBOARD,
    EXPECTED_FAMILIES,
    PROMETHEUS_SERIES,
    all_rules,
    dashboard_panels,
    load_rules,
    metric_names,
    recorded_names,
    sample_names,
)

TWISTD = "/opt/venvs/odinws/bin/twistd"
UNIT = "/lib/systemd/system/odinws.service"
TOPIC = "odinws.debtest"
TOKEN = "DEB1"
CHANNEL = f"odin.token.{TOKEN}.trade"
STOP_TIMEOUT = 40.0
#: Metrics the dashboard and alerts use that odinws may not export yet.
NOT_YET = sample_names(EXPECTED_FAMILIES)

results: list[bool] = []


def check(name: str, ok: bool, detail: str = "") -> bool:
    results.append(ok)
    print(("ok: " if ok else "not ok: ") + name + (f" ({detail})" if detail and not ok else ""),
          flush=True)
    return ok


def write_config(workdir: str, brokers: str) -> str:
    config = {
        "node_id": "debtest",
        "shards": 2,
        "kafka": {"brokers": brokers, "topics": {TOPIC: "trade"}, "start_offset": "earliest",
                  "session_timeout_ms": 2000, "max_poll_interval_ms": 4000,
                  # Tansu 0.6 never assigns a second static member (measured).
                  "static_membership": False},
        "supervisor": {"stats_interval": 0.2},
        # /metrics is read on the public port below (off by default); no
        # admin listener: its default port (3006) may be an installed
        # service's on this host.
        # startup_grace: READY=1 then means both shards registered, even on
        # a busy machine.
        "listen": {"public_metrics": True, "admin_port": "", "startup_grace": 60.0},
    }
    path = os.path.join(workdir, "odinws.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(config, f)
    os.chmod(path, 0o644)
    return path


class NotifySocket:
    """systemd's side of the notification protocol: an abstract Unix datagram socket."""

    def __init__(self) -> None:
        self.name = f"@odinws-deb-notify-{uuid.uuid4().hex}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + self.name[1:])
        self.sock.settimeout(0.2)
        self.messages: list[dict[str, str]] = []

    def first(self, field: str) -> dict[str, str] | None:
        """The first notification with C{field} so far (reading what arrived)."""
        try:
            data = self.sock.recv(4096)
            self.messages.append(dict(line.split("=", 1)
                                      for line in data.decode().split("\n")))
        except TimeoutError:
            pass
        return next((m for m in self.messages if field in m), None)


def unit_watchdog_usec() -> str:
    """The installed unit's WatchdogSec, in microseconds (as systemd passes it)."""
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    # Keep the unit's key case; typeshed types optionxform as a method.
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    with open(UNIT) as f:
        parser.read_file(f)
    return str(int(parser["Service"]["WatchdogSec"]) * 1_000_000)


def start_server(config: str, port: int, log_path: str, notify: NotifySocket) -> subprocess.Popen:
    # As the service would run it: the odinws user, a bare environment (plus
    # what systemd adds for Type=notify and WatchdogSec), cwd /. setpriv
    # execs (no forking wrapper), so the pid is twistd's own; a new session
    # lets cleanup kill the shards with it.
    argv = ["setpriv", "--reuid=odinws", "--regid=odinws", "--init-groups", "--",
            TWISTD, "--nodaemon", "--pidfile=", "odinws", "--config", config,
            "--port", f"tcp:{port}:interface=127.0.0.1"]
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONUNBUFFERED": "1",
           "NOTIFY_SOCKET": notify.name, "WATCHDOG_USEC": unit_watchdog_usec()}
    with open(log_path, "ab") as log:
        return subprocess.Popen(argv, cwd="/", env=env, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)


def exposed_names(text: str) -> set[str]:
    """Sample names a Prometheus text exposition has or declares (# TYPE)."""
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(None, 3)
            names.add(name)
            if kind == "counter" and not name.endswith("_total"):
                names.add(name + "_total")
            elif kind in ("histogram", "summary"):
                names.update(name + s for s in ("_bucket", "_count", "_sum"))
        elif line and not line.startswith("#"):
            names.add(line.split("{", 1)[0].split(" ", 1)[0])
    return names


def used_names() -> set[str]:
    """Metric names the Grafana dashboard and the Prometheus rules select."""
    with open(DASHBOARD) as f:
        dashboard = json.load(f)
    rules = load_rules()
    names = set()
    for panel in dashboard_panels(dashboard):
        for target in panel.get("targets", []):
            names |= metric_names(target["expr"])
    for rule in all_rules(rules):
        names |= metric_names(rule["expr"])
    return names - PROMETHEUS_SERIES - recorded_names(rules) - NOT_YET


def health(port: int) -> tuple[int, dict]:
    status, _, body = http_get(port, "/health")
    return status, json.loads(body)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def run(workdir: str) -> None:
    broker = TansuBroker(log_dir=workdir)
    server = None
    log_path = os.path.join(workdir, "odinws.log")
    try:
        broker.start()
        broker.create_topics([TOPIC])
        port = free_port()
        notify = NotifySocket()
        server = start_server(write_config(workdir, broker.bootstrap), port, log_path, notify)

        def notified_ready():
            if server.poll() is not None:
                raise AssertionError(f"odinws exited with {server.returncode}")
            return notify.first("READY")
        try:
            ready_message = wait_for(notified_ready, 90.0, 0, "READY=1")
            check("installed odinws says READY=1 with every shard alive (Type=notify)",
                  ready_message.get("STATUS", "").startswith("ready: 2/2 shards alive"),
                  repr(ready_message))
        except AssertionError as e:
            check("installed odinws says READY=1 with every shard alive (Type=notify)", False,
                  str(e))
        check("it pings the watchdog (WatchdogSec)", notify.first("WATCHDOG") is not None,
              repr(notify.messages))

        def ready():
            if server.poll() is not None:
                raise AssertionError(f"odinws exited with {server.returncode}")
            status, body = health(port)
            return body if status == 200 and body["shards_alive"] == body["shards_total"] else None
        try:
            body = wait_for(ready, 90.0, 0.2, "/health 200 with every shard alive")
        except AssertionError as e:
            check("installed odinws answers /health 200", False, str(e))
            return
        check("installed odinws answers /health 200", True)
        shard_pids = [s["pid"] for s in body["shards"]]
        check("both shards run", len(shard_pids) == 2, repr(body))

        def native_loops():
            loops = [s.get("outbound_native") for s in health(port)[1]["shards"]]
            return loops if loops and all(loop == "native" for loop in loops) else None
        try:
            wait_for(native_loops, 30.0, 0.2, "/health: outbound_native native on every shard")
            check("every shard sends with the C loop the package built (/health outbound_native)",
                  True)
        except AssertionError as e:
            check("every shard sends with the C loop the package built (/health outbound_native)",
                  False, str(e))

        status, _, metrics = http_get(port, "/metrics")
        check("/metrics says so too (odinws_outbound_native 1)",
              b'odinws_outbound_native{shard="0"} 1.0' in metrics,
              metrics[:300].decode("utf-8", "replace"))
        check("/metrics has shard-labelled odinws samples",
              status == 200 and b'odinws_connections{shard="0"}' in metrics,
              metrics[:300].decode("utf-8", "replace"))
        missing = used_names() - exposed_names(metrics.decode("utf-8", "replace"))
        check("the node exports every metric the dashboard and alerts use", not missing,
              "missing: " + ", ".join(sorted(missing)))

        client = Client(f"ws://127.0.0.1:{port}/ws")
        try:
            client.subscribe(CHANNEL)
            broker.produce(TOPIC, TOKEN.encode(), json.dumps({"price": 1.5}).encode())
            broker.flush()
            try:
                events = client.collect(1, timeout=90.0)
                got = events[0]
                check("a Kafka record reaches the WebSocket client",
                      got.get("channel") == CHANNEL and got.get("data") == {"price": 1.5},
                      repr(got))
            except AssertionError as e:
                check("a Kafka record reaches the WebSocket client", False, str(e))
        finally:
            client.close()

        server.send_signal(signal.SIGTERM)
        try:
            wait_for(lambda: notify.first("STOPPING"), 10.0, 0, "STOPPING=1")
            check("SIGTERM: it says STOPPING=1", True)
        except AssertionError as e:
            check("SIGTERM: it says STOPPING=1", False, str(e))
        try:
            code = server.wait(STOP_TIMEOUT)
            # twistd re-raises the signal that stopped it once it has shut
            # down cleanly; systemd counts death by SIGTERM as a clean exit.
            check("SIGTERM stops odinws cleanly", code in (0, -signal.SIGTERM),
                  f"exit status {code}")
        except subprocess.TimeoutExpired:
            check("SIGTERM stops odinws cleanly", False,
                  f"still running after {STOP_TIMEOUT:g}s")
        try:
            wait_for(lambda: not any(alive(p) for p in shard_pids), 10.0, 0.1, "shards gone")
            check("no shard outlives the parent", True)
        except AssertionError as e:
            check("no shard outlives the parent", False, str(e))
    finally:
        if server is not None and server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(10)
        broker.stop()
        if not all(results):
            with open(log_path, "rb") as f:
                sys.stdout.write("--- odinws log (tail) ---\n"
                                 + f.read()[-6000:].decode("utf-8", "replace") + "\n")


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="odinws-deb-e2e.") as workdir:
        # The odinws user must read the config in here.
        os.chmod(workdir, 0o755)
        try:
            run(workdir)
        except Exception as e:  # reported as a failed check, not a traceback
            check("end-to-end run", False, f"{type(e).__name__}: {e}")
    return 0 if results and all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
