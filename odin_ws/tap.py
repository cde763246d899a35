"""
Command-line options and service makers of the twistd plugins
C{odinws} (the parent: dispatcher, supervisor, hub) and C{odinws-shard}
(one shard process, started by the parent, not by hand).
"""

from __future__ import annotations

import os
import sys

from twisted.application import service
from twisted.application.internet import StreamServerEndpointService
from twisted.internet import defer
from twisted.internet.endpoints import serverFromString
from twisted.python import usage

from odin_ws import config as configmod

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
    the listener.
    """

    def __init__(self, dispatcher, supervisor, listener):
        super().__init__()
        self.dispatcher = dispatcher
        self.supervisor = supervisor
        self.listener = listener
        supervisor.setServiceParent(self)
        listener.setServiceParent(self)

    def setServiceParent(self, parent):
        super().setServiceParent(parent)
        install_logging(self, self.dispatcher.config, parent)

    @defer.inlineCallbacks
    def stopService(self):
        self.dispatcher.stopAccepting()
        service.Service.stopService(self)
        yield self.supervisor.stopService()
        yield self.listener.stopService()


def makeService(options, reactor=None) -> service.IService:
    if reactor is None:
        reactor = _reactor()
    from odin_ws.dispatcher import Dispatcher
    from odin_ws.health import Health
    from odin_ws.hub import Hub
    from odin_ws.supervisor import Supervisor

    cfg = options.config
    hub = Hub(reactor, cfg["hub.max_event_bytes"], cfg["hub.max_queue_batches"])
    env = dict(os.environ)
    env[SHARD_CONFIG_ENV] = cfg.to_json()
    try:
        supervisor = Supervisor(reactor, cfg, hub, shard_argv, env)
    except configmod.ConfigError as e:
        _fail(f"configuration error: {e}")
    static_dir = os.path.join(os.path.dirname(__file__), "static")
    health = Health(cfg, lambda: supervisor.shards)
    dispatcher = Dispatcher(reactor, cfg, lambda: supervisor.shards, health=health,
                            static_dir=static_dir if cfg["demo.enabled"] else None)
    health.dispatcher = dispatcher
    listener = StreamServerEndpointService(
        serverFromString(reactor, cfg["listen.port"]), dispatcher)
    listener._raiseSynchronously = True
    return Node(dispatcher, supervisor, listener)


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
