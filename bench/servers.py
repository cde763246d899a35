"""
The servers under test. Each runs its data path pinned to CPU 0 and gets the
same ~200-byte JSON events at a rate the harness sets:

* odinws: `twistd odinws --shards 1`; events come from Kafka (Apache Kafka,
  one node on CPU 1), written by bench/kafka_feed.py on CPU 1. The parent (dispatcher) is pinned to CPU 1.
* node-ws: bench/peers/node_ws.js, a built-in publisher (timer in the same
  event loop) and ws.send() to every client.
* py-websockets: bench/peers/py_websockets.py, an asyncio task and
  websockets' broadcast().
* cpython-raw: bench/peers/raw_py.py, the CPython raw ceiling: an epoll loop
  that sends each tick's prebuilt frames to every client with one
  socket.send().
* nchan: nginx (1 worker) + nchan; the load client POSTs each event to the
  publisher location over one keep-alive connection (pipelined per burst).
* centrifugo: Centrifugo v6 with GOMAXPROCS=1 on CPU 0, its own Kafka
  consumer reading the events odinws reads (same broker, topic and feed);
  the load client speaks its JSON protocol (-C).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator

from procs import Proc, free_port

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
WORK = os.path.join(HERE, ".work")
SERVER_CPU = {0}
CLIENT_CPU = {1}
# With librdkafka's default fetch.wait.max.ms (500) events took ~200 ms (p50)
# through the Tansu broker even at low rates; with 5 ms about 20 ms. Measured,
# see docs/performance.md; the broker, not odinws, set that latency.
FETCH_WAIT_MS = int(os.environ.get("BENCH_FETCH_WAIT_MS", "5"))
SUBSCRIBE = '{"type":"subscribe","channels":["odin.token.*.*"]}'
#: Event tokens when every client takes everything (events rotate over them).
ALL_TOKENS = 16


def pin_threads(pid: int, cpus: set[int]) -> None:
    """Pin every thread of a process (sched_setaffinity on a pid moves one thread)."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            os.sched_setaffinity(int(tid), cpus)
        except OSError:
            pass


class Server:
    """Base: start/stop, where clients connect, how events are driven."""

    name = "?"
    ws_path = "/"
    #: The modes (event batch sizes) one running instance can serve.
    batches = (10, 1)

    def __init__(self, rundir: str):
        self.rundir = rundir
        self.port = free_port()
        self.procs: list[Proc] = []
        #: Random-tokens cells: (tokens per connection, tokens in all); None:
        #: every client subscribes to everything (see L{filter_tokens}).
        self.random: tuple[int, int] | None = None

    def filter_tokens(self, per_conn: int, tokens: int) -> None:
        """
        Each connection subscribes to C{per_conn} random tokens of C{tokens}
        (the load client's -r/-T) and events rotate over C{tokens} tokens,
        so every server sends each connection only its tokens' events.
        """
        self.random = (per_conn, tokens)

    @property
    def tokens(self) -> int:
        """How many tokens the events rotate over."""
        return self.random[1] if self.random else ALL_TOKENS

    def random_args(self) -> list[str]:
        """The load client's arguments for the random-tokens subscriptions."""
        if not self.random:
            return []
        return ["-r", str(self.random[0]), "-T", str(self.random[1])]

    def start(self, batch: int) -> None:
        raise NotImplementedError

    def data_pids(self) -> list[int]:
        """Processes that hold the connections (RSS and CPU are theirs)."""
        return [self.procs[0].pid]

    def aux_pids(self) -> list[int]:
        """Helper processes of the server (reported, not counted as data path)."""
        return []

    def client_args(self) -> list[str]:
        return self.random_args()

    def set_rate(self, client: Proc, rate: float, batch: int) -> None:
        self.procs[0].send(f"rate {rate:.3f} {batch} {self.tokens}")

    def ready_check(self) -> None:
        """Called after clients connected and before events flow."""

    def stop(self) -> None:
        for p in reversed(self.procs):
            p.stop()
        self.procs = []

    def _log(self, what: str) -> str:
        return os.path.join(self.rundir, f"{self.name}-{what}.log")


class NodeWs(Server):
    name = "node-ws"

    def start(self, batch: int) -> None:
        env = dict(os.environ, BENCH_WORK=WORK)
        p = Proc(self.name, ["node", os.path.join(HERE, "peers", "node_ws.js"), str(self.port)],
                 SERVER_CPU, env=env, log_path=self._log("server"))
        self.procs.append(p)
        p.wait_for("ready", 30)


class PyWebsockets(Server):
    name = "py-websockets"
    script = "py_websockets.py"

    def start(self, batch: int) -> None:
        p = Proc(self.name, [sys.executable, os.path.join(HERE, "peers", self.script),
                             str(self.port)], SERVER_CPU, log_path=self._log("server"))
        self.procs.append(p)
        p.wait_for("ready", 30)


class CpythonRaw(PyWebsockets):
    """The CPython raw ceiling: one socket.send() per client per tick, nothing else."""

    name = "cpython-raw"
    script = "raw_py.py"

    def own_share_begin(self) -> None:
        """Start a window of L{own_share}."""
        self.own_share()

    def own_share(self) -> dict | None:
        """
        Its own share since L{own_share_begin}, as odinws's: p50/p99 (ms) of
        each tick's due time to its last send(), measured by raw_py itself.
        """
        self.procs[0].send("loops")
        got = self.procs[0].read_json(10)
        return got if got.get("n") else None


NGINX_CONF = r"""
load_module {module};
worker_processes 1;
worker_cpu_affinity 01;
worker_rlimit_nofile 20000;
daemon off;
master_process on;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 20000; use epoll; multi_accept on; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/tmp;
    nchan_max_reserved_memory 256M;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location = /pub {{
            nchan_publisher;
            nchan_channel_id bench;
            nchan_message_buffer_length 16;
            nchan_message_timeout 60s;
        }}
        location = /ws {{
            nchan_subscriber websocket;
            nchan_channel_id bench;
            nchan_subscriber_first_message newest;
        }}
        # Random-tokens cells: one channel per token, a subscriber multiplexes
        # its tokens (/ws/<t1>/<t2>/<t3>), events are published per token.
        location ~ ^/pub/(\d+)$ {{
            nchan_publisher;
            nchan_channel_id $1;
            nchan_message_buffer_length 16;
            nchan_message_timeout 60s;
        }}
        location ~ ^/ws/(\d+)/(\d+)/(\d+)$ {{
            nchan_subscriber websocket;
            nchan_channel_id $1 $2 $3;
            nchan_subscriber_first_message newest;
        }}
    }}
}}
"""


class Nchan(Server):
    name = "nchan"
    ws_path = "/ws"

    def start(self, batch: int) -> None:
        prefix = os.path.join(self.rundir, "nginx")
        os.makedirs(os.path.join(prefix, "tmp"), exist_ok=True)
        conf = os.path.join(prefix, "nginx.conf")
        with open(conf, "w") as f:
            f.write(NGINX_CONF.format(module="/usr/share/nginx/modules/ngx_nchan_module.so",
                                      prefix=prefix, port=self.port))
        p = Proc(self.name, ["nginx", "-p", prefix, "-c", conf], None, log_path=self._log("server"),
                 stdout_pipe=False)
        self.procs.append(p)
        deadline = time.monotonic() + 20
        while not self._worker() and time.monotonic() < deadline:
            time.sleep(0.1)
        if not self._worker():
            raise RuntimeError("nginx started no worker; see " + self._log("server"))
        pin_threads(p.pid, SERVER_CPU)
        _wait_port(self.port, 20)

    def _worker(self) -> int | None:
        from procs import children
        kids = children(self.procs[0].pid)
        return kids[0] if kids else None

    def data_pids(self) -> list[int]:
        return [self._worker()]

    def aux_pids(self) -> list[int]:
        return [self.procs[0].pid]

    def client_args(self) -> list[str]:
        # -X: the random tokens go in the subscriber's path and each event to /pub/<token>
        return ["-P", str(self.port), "-U", "/pub"] + (
            self.random_args() + ["-X"] if self.random else [])

    def set_rate(self, client: Proc, rate: float, batch: int) -> None:
        client.send(f"pub {rate:.3f} {batch} {self.tokens}")


class KafkaFed(Server):
    """
    A server fed from Kafka: an Apache Kafka node (a fresh one per
    instance, see L{stop}) with the topic odin.trades, and
    bench/kafka_feed.py producing the events into it on the client's CPU.
    """

    broker = None  # the broker of the running instance (one at a time)
    _group = 0     # consumer groups: a new one per instance
    #: The consumer group of the running instance (L{next_group}).
    group = ""

    @staticmethod
    def start_broker(rundir: str) -> None:
        if KafkaFed.broker is not None:
            return
        sys.path.insert(0, REPO)
        from tests.helpers.broker import KafkaBroker
        # Apache Kafka, what users run. Tansu (the demo's broker, the bench's
        # until 2026-12-04) stopped serving fetches to a consumer with a
        # backlog of tens of thousands of records after a saturated step,
        # for tens of seconds (lag 70,000, the consumer idle in consume(),
        # Tansu idle); Apache Kafka served the same backlog in 2 s.
        # Its own data directory: one shared by the instances of a run kept
        # every cell's records, and Centrifugo's consumer (earliest offset,
        # a new group per instance) started each cell with all of them
        # (measured: 97 s old events in its first 5k window).
        broker = KafkaBroker(log_dir=tempfile.mkdtemp(prefix="kafka-", dir=rundir))
        broker.start()
        KafkaFed.broker = broker
        pin_threads(broker.pid, CLIENT_CPU)
        broker.create_topics(["odin.trades"], partitions=1)

    @staticmethod
    def stop_broker() -> None:
        if KafkaFed.broker is not None:
            KafkaFed.broker.stop()
            KafkaFed.broker = None

    @staticmethod
    def next_group() -> str:
        """A consumer group no earlier instance of this run used."""
        KafkaFed._group += 1
        return f"bench{os.getpid()}-{KafkaFed._group}"

    def start_feed(self) -> None:
        """Start the producer (after the broker); L{set_rate} drives it."""
        self.feed = Proc("kafka-feed", [sys.executable, os.path.join(HERE, "kafka_feed.py"),
                                        self.broker.bootstrap] + self.feed_args(), CLIENT_CPU,
                         log_path=self._log("feed"))
        self.procs.append(self.feed)
        self.feed.wait_for("ready", 30)

    def feed_args(self) -> list[str]:
        """bench/kafka_feed.py's arguments after the bootstrap address."""
        return []

    def set_rate(self, client: Proc, rate: float, batch: int) -> None:
        self.feed.send(f"rate {rate:.3f} {batch} {self.tokens}")

    def stop(self) -> None:
        super().stop()
        # A fresh broker for every instance: each cell starts from an empty
        # topic (odinws's history warm-up reads none of the cells before),
        # and one Tansu that took every cell's events for 20 minutes stopped
        # answering fetches in time (a full make bench of 2026-11-30).
        KafkaFed.stop_broker()


class Odinws(KafkaFed):
    """
    odinws with one shard and its shipped C{kafka.poll_batch}: a poll hands
    over the first record as soon as it is there, with whatever else is
    already fetched (up to 500), so a shard that keeps up delivers each
    burst (or event) alone, and one that falls behind writes what queued
    meanwhile together, one send per connection.
    """

    name = "odinws"
    ws_path = "/ws"
    batches = (10,)
    #: kafka.poll_batch = the burst size (L{OdinwsPerTick}), else the default.
    per_tick = False

    def __init__(self, rundir: str, batch: int = 10, flush_delay: float = 0.0,
                 repo: str = REPO, overrides: dict | None = None):
        super().__init__(rundir)
        self.batches = (batch,)
        #: outbound.flush_delay of this instance (the flush-window cells).
        self.flush_delay = flush_delay
        #: The source tree that runs (bench/cost.py: another commit's worktree).
        self.repo = repo
        #: Settings ("section.key": value) applied over the bench's own.
        self.overrides = overrides or {}

    def settings(self, batch: int) -> dict:
        """The instance's configuration (a tree, as in the YAML file)."""
        settings = {
            "shards": 1, "cpu_affinity": [0],
            # The peers listen with large backlogs too (nginx: 4096).
            # /metrics on the public port: the slow-client counters and the
            # own-share latency histogram are read from it.
            "listen": {"port": f"tcp:{self.port}:interface=127.0.0.1:backlog=4096",
                       "public_metrics": True, "max_heads_per_ip": 4096, "admin_port": ""},
            "outbound": {"flush_delay": self.flush_delay},
            "kafka": {"brokers": self.broker.bootstrap, "group": self.group,
                      "topics": {"odin.trades": "trade"}, "start_offset": "latest",
                      # Apache Kafka's shortest (group.min.session.timeout.ms).
                      "session_timeout_ms": 6000, "max_poll_interval_ms": 6000,
                      "consumer_config": {"fetch.wait.max.ms": FETCH_WAIT_MS}},
            # The load client is a few loopback addresses standing for
            # thousands of clients: the per-IP limits would answer 429.
            # (Below the 20,000 open files one process may have here.)
            "limits": {"max_connections": 16000, "max_connections_per_shard": 16000,
                       "max_connections_per_ip": 16000, "connection_rate_per_ip": 100000,
                       "connection_burst_per_ip": 20000},
            # No pings (the peers run without them too) and no idle close.
            "keepalive": {"ping_interval": 0, "idle_timeout": 0},
            # The load client opens 128 at a time; the default 64 handoffs in
            # flight per shard would answer the rest 503 while the shard is busy.
            "supervisor": {"max_handoffs_in_flight": 1024},
            # The admission guard would refuse connections while CPU 0 is busy.
            "guard": {"cpu_threshold": 0, "memory_threshold": 0},
            "log": {"level": "warn"},
        }
        if not self.flush_delay:
            del settings["outbound"]  # (commits before the setting existed)
        if self.per_tick:
            settings["kafka"]["poll_batch"] = batch
        for key, value in self.overrides.items():
            section, _, name = key.rpartition(".")
            (settings.setdefault(section, {}) if section else settings)[name] = value
        return settings

    def start(self, batch: int) -> None:
        self.start_broker(self.rundir)
        self.group = self.next_group()
        conf = os.path.join(self.rundir, f"odinws-{self.port}.yaml")
        with open(conf, "w") as f:
            json.dump(self.settings(batch), f)  # JSON is YAML
        env = dict(os.environ, PYTHONPATH=self.repo + os.pathsep + os.environ.get("PYTHONPATH", ""))
        twistd = "import sys; sys.argv[0]='twistd'; from twisted.scripts.twistd import run; run()"
        p = Proc(self.name, [sys.executable, "-c", twistd, "--nodaemon", "--pidfile=",
                             "odinws", "--config", conf], None, env=env, cwd=self.rundir,
                 log_path=self._log(f"server-{self.port}"), stdout_pipe=False)
        self.procs.append(p)
        self.start_feed()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            h = self.health()
            if h and h.get("shards_alive") and h.get("status") == "ok":
                break
            if not p.alive():
                raise RuntimeError("odinws exited; see " + p.log_path)
            time.sleep(0.2)
        else:
            raise RuntimeError(f"odinws /health not ok within 60s: {self.health()}")
        pin_threads(p.pid, CLIENT_CPU)  # the dispatcher: idle during the run

    def health(self) -> dict | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            return json.loads(e.read() or b"{}")
        except (OSError, ValueError):
            return None

    def counters(self) -> dict:
        """
        The slow-client counters of /metrics, summed over shards and labels:
        frames dropped, conflated, slow disconnects, and the largest backlog
        one connection had (bytes, Twisted's buffer plus the Outbox).
        """
        names = {"odinws_events_dropped_total": "dropped",
                 "odinws_events_conflated_total": "conflated",
                 "odinws_slow_disconnects_total": "slow_disconnects",
                 "odinws_outbound_buffer_high_water_bytes": "high_water"}
        out = dict.fromkeys(names.values(), 0.0)
        for name, _, v in self.samples():
            key = names.get(name)
            if key is not None:
                out[key] = max(out[key], v) if key == "high_water" else out[key] + v
        return out

    def metrics_text(self) -> str:
        """The node's /metrics ("" if it did not answer)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as r:
                return r.read().decode()
        except OSError:
            return ""

    def samples(self) -> Iterator[tuple[str, str, float]]:
        """
        The samples of the node's /metrics, comments left out: (name, the
        labels as written, value); L{label} reads one label.
        """
        for line in self.metrics_text().splitlines():
            if not line or line.startswith("#"):
                continue
            head, _, value = line.rpartition(" ")
            name, _, labels = head.partition("{")
            yield name, labels, float(value)

    def own_latency(self) -> dict[float, float]:
        """
        The cumulative buckets (upper bound in s -> count) of
        odinws_own_latency_seconds, summed over shards and paths: consumed
        from Kafka to handed to the last subscriber's socket.
        """
        out: dict[float, float] = {}
        for name, labels, v in self.samples():
            if name == "odinws_own_latency_seconds_bucket":
                le = label(labels, "le")
                bound = float("inf") if le == "+Inf" else float(le)
                out[bound] = out.get(bound, 0.0) + v
        return out

    def own_share_begin(self) -> None:
        """Start a window of L{own_share}."""
        self._own_before = self.own_latency()

    def own_share(self) -> dict | None:
        """
        Its own share since L{own_share_begin}: p50/p99 (ms) of consumed from
        Kafka to handed to the last subscriber's socket, from /metrics.
        """
        import report
        return report.histogram_quantiles(self._own_before, self.own_latency())

    def data_pids(self) -> list[int]:
        from procs import children
        return children(self.procs[0].pid)[:1]

    def aux_pids(self) -> list[int]:
        return [self.procs[0].pid]

    def client_args(self) -> list[str]:
        return self.random_args() or ["-S", SUBSCRIBE]


class OdinwsPython(Odinws):
    """
    The same node with its pure-Python send loop (outbound.native: off):
    the cells beside odinws's show what the native loop earns, same run.
    """

    name = "odinws-py"

    def __init__(self, rundir: str, batch: int = 10, flush_delay: float = 0.0,
                 repo: str = REPO, overrides: dict | None = None):
        super().__init__(rundir, batch, flush_delay, repo,
                         {"outbound.native": "off", **(overrides or {})})


class OdinwsPerTick(Odinws):
    """
    The same node with C{kafka.poll_batch} set to the burst size (10, or 1
    per turn; a fresh instance per mode): a poll never takes more than one
    tick's events, so nothing coalesces across ticks even when the shard
    falls behind. What the bench ran as "odinws" until 2026-12-04: the
    cost of one send per connection and tick, beside the shipped setting.
    """

    name = "odinws-tick"
    per_tick = True


class OdinwsSse(Odinws):
    """odinws's Server-Sent Events endpoint: the same node, events as an event stream."""

    name = "odinws-sse"
    ws_path = "/sse?channels=odin.token.*.*"

    def client_args(self) -> list[str]:
        return ["-E"]


#: The pinned Centrifugo release (bench/setup.sh reads it from this line and builds it).
CENTRIFUGO_VERSION = "6.9.1"
CENTRIFUGO = os.path.join(WORK, f"centrifugo-v{CENTRIFUGO_VERSION}", "centrifugo")


class Centrifugo(KafkaFed):
    """
    Centrifugo v6 (bench/setup.sh builds it), one Go thread at a time on the
    server's CPU (GOMAXPROCS=1), fed by its own Kafka consumer from the same
    topic as odinws in publication data mode: each record's value is
    published as is into the channel its "centrifugo-channels" header names
    (bench/kafka_feed.py --centrifugo). Everyone-gets-everything cells: all
    events into odin.all, every client subscribed to it; random-tokens cells:
    each event into odin.token.<t>.trade, each client subscribed to its 3.
    One instance serves both modes (its configuration does not depend on
    them), like the other peers.
    """

    name = "centrifugo"
    ws_path = "/connection/websocket"

    def feed_args(self) -> list[str]:
        return ["--centrifugo", "token" if self.random else "all"]

    def settings(self) -> dict:
        """Its configuration file; every key that is not Centrifugo's default is explained."""
        return {
            "http_server": {"address": "127.0.0.1", "port": self.port},
            "log": {"level": "warn"},
            # /health answers when the node runs (the harness waits for it).
            "health": {"enabled": True},
            # No outside traffic from the bench (the build has no stats
            # endpoint anyway).
            "usage_stats": {"disabled": True},
            "client": {
                # The load client connects without a JWT, as the other
                # servers' clients connect without credentials.
                "allow_anonymous_connect_without_token": True,
                # No pings (odinws runs without them in the bench, the other
                # peers have none): a stalled client would otherwise be
                # disconnected for missing pongs, which no other server does.
                # A negative value turns each off; Centrifugo still insists
                # on ping_interval > pong_timeout, hence -1 s and -2 s.
                "ping_interval": "-1s", "pong_timeout": "-2s",
            },
            # Subscribing without a subscription token, anonymous clients
            # included (the channels have no namespace); history, presence
            # and join/leave stay off (the defaults).
            "channel": {"without_namespace": {"allow_subscribe_for_client": True,
                                              "allow_subscribe_for_anonymous": True}},
            "consumers": [{
                "name": "bench", "enabled": True, "type": "kafka",
                "kafka": {
                    "brokers": [self.broker.bootstrap], "topics": ["odin.trades"],
                    "consumer_group": self.group,
                    # 500 ms by default; odinws runs with 5 ms on the same
                    # broker (FETCH_WAIT_MS). Its Kafka client (franz-go)
                    # refuses less than 10 ms.
                    "fetch_max_wait": f"{max(FETCH_WAIT_MS, 10)}ms",
                    "publication_data_mode": {"enabled": True},
                },
            }],
        }

    def start(self, batch: int) -> None:
        self.start_broker(self.rundir)
        self.group = self.next_group()
        if not os.path.exists(CENTRIFUGO):
            raise RuntimeError(f"{CENTRIFUGO} missing: run bench/setup.sh")
        conf = os.path.join(self.rundir, f"centrifugo-{self.port}.json")
        with open(conf, "w") as f:
            json.dump(self.settings(), f)
        p = Proc(self.name, [CENTRIFUGO, "--config", conf], SERVER_CPU,
                 env=dict(os.environ, GOMAXPROCS="1"), cwd=self.rundir,
                 log_path=self._log(f"server-{self.port}"), stdout_pipe=False)
        self.procs.append(p)
        self.start_feed()
        deadline = time.monotonic() + 60
        while not self.healthy():
            if not p.alive():
                raise RuntimeError("centrifugo exited; see " + p.log_path)
            if time.monotonic() > deadline:
                raise RuntimeError("centrifugo /health not ok within 60s; see " + p.log_path)
            time.sleep(0.2)
        # Threads the Go runtime started before Proc pinned the process.
        pin_threads(p.pid, SERVER_CPU)

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def client_args(self) -> list[str]:
        return ["-C", "odin.all"] + self.random_args()


def label(labels: str, key: str) -> str:
    """The value of label C{key} in a sample's labels as written (L{Odinws.samples})."""
    return labels.split(f'{key}="', 1)[1].split('"', 1)[0]


def _wait_port(port: int, timeout: float) -> None:
    import socket
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"port {port} not listening after {timeout:g}s")


SERVERS = {"odinws": Odinws, "odinws-py": OdinwsPython, "odinws-tick": OdinwsPerTick,
           "odinws-sse": OdinwsSse,
           "cpython-raw": CpythonRaw, "node-ws": NodeWs, "py-websockets": PyWebsockets,
           "nchan": Nchan, "centrifugo": Centrifugo}
