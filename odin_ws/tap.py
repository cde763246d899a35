"""
Command-line options and service makers of the twistd plugins
C{odinws} (the parent: dispatcher, supervisor, hub) and C{odinws-shard}
(one shard process, started by the parent, not by hand).
"""

from __future__ import annotations

import os
import signal
import sys

from twisted.application import service
from twisted.application.internet import StreamServerEndpointService
from twisted.internet import defer
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger
from twisted.python import usage

from odin_ws import config as configmod
from odin_ws import control
from odin_ws.guard import raise_nofile

log = Logger()

#: Environment variable carrying the parent's effective config to a shard.
SHARD_CONFIG_ENV = "ODINWS_INTERNAL_SHARD_CONFIG"


def _fail(message: str) -> None:
    """Stop startup with one line and a non-zero status, no traceback."""
    sys.stderr.write(f"odinws: {message}\n")
    raise SystemExit(2)


class Options(usage.Options):
    synopsis = "[--config PATH] [--port ENDPOINT] [--shards N] [--kafka-brokers HOST:PORT,...]"
    longdesc = ("Kafka-to-WebSocket fan-out. Settings come from built-in defaults, "
                "then the YAML file, then ODINWS_* environment variables, then these "
                "flags. Every setting is documented in etc/odinws.yaml.")
    optParameters = [
        ["config", "c", None, "YAML configuration file."],
    ] + [
        [opt.flag, None, None, f"{opt.help} [default: {opt.default}] (setting {opt.key})"]
        for opt in configmod.SCHEMA if opt.flag
    ]

    def postOptions(self):
        overrides = {}
        for opt in configmod.SCHEMA:
            if opt.flag and self[opt.flag] is not None:
                raw = self[opt.flag]
                if opt.kind is int:
                    try:
                        raw = int(raw)
                    except ValueError:
                        raise usage.UsageError(f"--{opt.flag}: expected an integer, got {raw!r}")
                overrides[opt.key] = raw
        self.overrides = overrides
        try:
            self.config = configmod.load(self["config"], overrides=overrides)
        except configmod.ConfigError as e:
            _fail(f"configuration error: {e}")
        try:
            serverFromString(_reactor(), self.config["listen.port"])
        except (ValueError, KeyError, TypeError) as e:
            _fail(f"configuration error: listen.port: {e}")


def _reactor():
    from twisted.internet import reactor
    return reactor


def twistd_argv(*args: str) -> list[str]:
    """
    Run twistd with this interpreter (C{python -m twisted} is the other
    runner, C{twist}, whose options differ).
    """
    return [sys.executable, "-c",
            "import sys; sys.argv[0] = 'twistd'; "
            "from twisted.scripts.twistd import run; run()", *args]


def shard_argv(index: int) -> list[str]:
    """How the parent starts shard C{index}: twistd in a process of its own."""
    return twistd_argv("--nodaemon", "--pidfile=", "--logfile=-", "odinws-shard",
                       "--index", str(index))


def install_logging(svc: service.IService, cfg: configmod.Config, parent) -> None:
    """
    Give twistd's Application our log observer (format, level, audit file,
    flood guard): twistd asks the application for an ILogObserver component
    before it starts logging.
    """
    from twisted.logger import ILogObserver

    from odin_ws.logs import make_observer
    if not hasattr(parent, "setComponent"):
        return
    audit_out = None
    if cfg["log.audit_file"]:
        try:
            audit_out = open(cfg["log.audit_file"], "a", encoding="utf-8")
        except OSError as e:
            _fail(f"configuration error: log.audit_file: {e.strerror}")
    parent.setComponent(ILogObserver, make_observer(
        cfg["log.format"], cfg["log.level"], audit_out=audit_out,
        per_second=cfg["log.max_lines_per_second"]))


class Node(service.MultiService):
    """
    The parent process. Stops in the order an operator wants: stop
    accepting (and say so in /health), drain and stop the shards, then close
    the listeners. SIGHUP re-reads the configuration.
    """

    def __init__(self, reactor, options, dispatcher, supervisor, listeners, guard):
        super().__init__()
        self.reactor = reactor
        self.options = options
        self.dispatcher = dispatcher
        self.supervisor = supervisor
        self.listeners = listeners
        self.guard = guard
        supervisor.setServiceParent(self)
        for listener in listeners:
            listener.setServiceParent(self)

    def setServiceParent(self, parent):
        super().setServiceParent(parent)
        install_logging(self, self.dispatcher.config, parent)

    def startService(self):
        capacity = raise_nofile()
        log.info("open-files limit {n}: room for about {c} connections on this node",
                 n=capacity, c=max(0, capacity - 100))
        super().startService()
        self.guard.start()
        signal.signal(signal.SIGHUP, lambda *_: self.reactor.callFromThread(self.reload))

    def reload(self) -> None:
        """Re-read file and environment (flags still win); apply what can change live."""
        from odin_ws.logs import audit
        old = self.dispatcher.config
        try:
            new = configmod.load(self.options["config"], overrides=self.options.overrides)
        except configmod.ConfigError as e:
            audit.error("reload refused: {e}", e=str(e))
            return
        live, restart = configmod.live_changes(old, new)
        values = dict(old)
        values.update({k: new[k] for k in live})
        applied = configmod.Config(values)
        try:
            # As at start-up: keys and certificates the shards would refuse
            # refuse the whole reload (and restarted shards could not start).
            _check_keys(applied)
        except configmod.ConfigError as e:
            audit.error("reload refused: {e}", e=str(e))
            return
        self.dispatcher.config = applied
        self.guard.cpu_threshold = applied["guard.cpu_threshold"]
        self.guard.memory_threshold = applied["guard.memory_threshold"]
        self.gate.reconfigure(applied)
        blob = applied.to_json().encode()
        # Shards started from now on (restarts after a crash) must get the
        # reloaded settings too, not the ones of the parent's start-up: else a
        # key or certificate retired by this reload comes back with them.
        self.supervisor._env[SHARD_CONFIG_ENV] = blob.decode()
        for handle in self.supervisor.shards:
            if handle.alive:
                handle.call(control.Reload, config=blob).addErrback(
                    lambda f, i=handle.index: log.warn("shard {i} did not reload: {f}",
                                                       i=i, f=f.getErrorMessage()))
        audit.info("configuration reloaded; applied live: {live}; needs a restart: {restart}",
                   live=", ".join(live) or "none", restart=", ".join(restart) or "none")

    @defer.inlineCallbacks
    def stopService(self):
        self.dispatcher.stopAccepting()
        service.Service.stopService(self)
        self.guard.stop()
        yield self.supervisor.stopService()
        for listener in self.listeners:
            yield listener.stopService()
        yield self.dispatcher.close()


class Gate:
    """The dispatcher's door check: resource guard, then per-IP connection rate."""

    def __init__(self, reactor, config, guard):
        from odin_ws.ratelimit import KeyedBuckets
        self.guard = guard
        self._buckets = KeyedBuckets
        self.reactor = reactor
        self.reconfigure(config)

    def reconfigure(self, config) -> None:
        self.buckets = self._buckets(config["limits.connection_rate_per_ip"],
                                     config["limits.connection_burst_per_ip"],
                                     self.reactor.seconds)

    def __call__(self, ip: str):
        if not self.guard.accepting:
            return (503, "overloaded_" + (self.guard.reason or "resources"))
        if not self.buckets.take(ip):
            return (429, "ip_rate")
        return None


def _check_keys(cfg: configmod.Config):
    """Load the JWT keys and TLS files as a shard would; the TLS options or None.

    @raise configmod.ConfigError: naming the key whose file is unusable.
    """
    from odin_ws import tls
    from odin_ws.auth import Verifier
    Verifier(cfg)
    return tls.server_options(cfg) if tls.enabled(cfg) else None


def makeService(options, reactor=None) -> service.IService:
    if reactor is None:
        reactor = _reactor()
    from odin_ws.dispatcher import Dispatcher
    from odin_ws.guard import Guard, read_budget
    from odin_ws.health import Health
    from odin_ws.hub import Hub
    from odin_ws.supervisor import Supervisor

    cfg = options.config
    try:
        # Fail at startup, in the parent, on keys and certificates shards would refuse.
        tls_options = _check_keys(cfg)
    except configmod.ConfigError as e:
        _fail(f"configuration error: {e}")
    hub = Hub(reactor, cfg["hub.max_event_bytes"], cfg["hub.max_queue_batches"])
    env = dict(os.environ)
    env[SHARD_CONFIG_ENV] = cfg.to_json()
    try:
        supervisor = Supervisor(reactor, cfg, hub, shard_argv, env)
    except configmod.ConfigError as e:
        _fail(f"configuration error: {e}")
    guard = Guard(reactor, lambda: [os.getpid()] + [h.pid for h in supervisor.shards if h.pid],
                  read_budget(), cfg["guard.cpu_threshold"], cfg["guard.memory_threshold"],
                  cfg["guard.interval"])
    gate = Gate(reactor, cfg, guard)
    static_dir = os.path.join(os.path.dirname(__file__), "static")
    health = Health(cfg, lambda: supervisor.shards, guard)
    shards = lambda: supervisor.shards  # noqa: E731
    dispatcher = Dispatcher(reactor, cfg, shards, health=health,
                            static_dir=static_dir if cfg["demo.enabled"] else None,
                            tls=tls_options, gate=gate)
    health.dispatcher = dispatcher
    listeners = [StreamServerEndpointService(serverFromString(reactor, cfg["listen.port"]),
                                             dispatcher)]
    if cfg["listen.admin_port"]:
        admin = Dispatcher(reactor, cfg, shards, health=health, admin=True)
        listeners.append(StreamServerEndpointService(
            serverFromString(reactor, cfg["listen.admin_port"]), admin))
    for listener in listeners:
        listener._raiseSynchronously = True
    node = Node(reactor, options, dispatcher, supervisor, listeners, guard)
    node.gate = gate
    return node


class ShardOptions(usage.Options):
    synopsis = "--index N (started by the odinws parent; not for direct use)"
    optParameters = [
        ["index", None, None, "Shard number.", int],
        ["control-fd", None, 3, "Inherited Unix socket to the parent.", int],
    ]

    def postOptions(self):
        if self["index"] is None:
            raise usage.UsageError("--index is required")
        text = os.environ.get(SHARD_CONFIG_ENV)
        if not text:
            _fail(f"odinws-shard is started by the odinws parent ({SHARD_CONFIG_ENV} missing)")
        try:
            self.config = configmod.Config.from_json(text)
        except (ValueError, configmod.ConfigError) as e:
            _fail(f"shard configuration error: {e}")


def makeShardService(options, reactor=None) -> service.IService:
    if reactor is None:
        reactor = _reactor()
    from odin_ws.shard import Shard
    return Shard(reactor, options.config, options["index"], options["control-fd"])
