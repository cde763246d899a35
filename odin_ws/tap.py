"""
Plugin glue of the twistd plugins C{odinws} (the parent: dispatcher,
supervisor, hub) and C{odinws-shard} (one shard process, started by the
parent, not by hand): command-line options, and the service makers that
assemble each process's services. No domain logic lives here.
"""

from __future__ import annotations

import os

from twisted.application import service
from twisted.application.internet import StreamServerEndpointService
from twisted.internet.endpoints import serverFromString
from twisted.python import usage

from odin_ws.common import config as configmod
from odin_ws.common.launch import SHARD_CONFIG_FD, fail, read_config, shard_argv
from odin_ws.common.settings import Settings


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
                        raise usage.UsageError(
                            f"--{opt.flag}: expected an integer, got {raw!r}") from None
                overrides[opt.key] = raw
        self.overrides = overrides
        try:
            self.settings = self.load()
        except configmod.ConfigError as e:
            fail(f"configuration error: {e}")
        try:
            serverFromString(_reactor(), self.settings.listen.port)
        except (ValueError, KeyError, TypeError) as e:
            fail(f"configuration error: listen.port: {e}")

    def load(self) -> Settings:
        """Read file and environment again, this command line's flags on top."""
        return Settings.from_config(configmod.load(self["config"], overrides=self.overrides))


def _reactor():
    from twisted.internet import reactor
    return reactor


def check_keys(settings: Settings) -> object:
    """Load the JWT keys and TLS files as a shard would; the TLS options or None.

    @raise configmod.ConfigError: naming the key whose file is unusable.
    """
    from odin_ws.shard.clients import tls
    from odin_ws.shard.clients.auth import Verifier
    Verifier(settings.auth)
    return tls.server_options(settings.tls) if tls.enabled(settings.tls) else None


def makeService(options, reactor=None) -> service.IService:
    if reactor is None:
        reactor = _reactor()
    from twisted.logger import Logger

    from odin_ws.common import twisted_internals
    from odin_ws.parent import backlog
    from odin_ws.parent.admission import Admission
    from odin_ws.parent.coverage import GroupCoverage
    from odin_ws.parent.dispatcher import Dispatcher
    from odin_ws.parent.guard import Guard, read_budget
    from odin_ws.parent.health import Health
    from odin_ws.parent.hub import Hub
    from odin_ws.parent.node import Node
    from odin_ws.parent.scrape import MetricsScrape
    from odin_ws.parent.shardhandle import ShardHandle
    from odin_ws.parent.supervisor import Supervisor
    from odin_ws.parent.systemd import SystemdNotifier

    settings = options.settings
    try:
        # Fail at startup, in the parent, on keys and certificates shards would refuse.
        tls_options = check_keys(settings)
    except configmod.ConfigError as e:
        fail(f"configuration error: {e}")
    if settings.outbound.native == "on":
        # And on a send loop they could not load (auto: each shard says it once).
        from odin_ws.shard.delivery import nativesend
        try:
            nativesend.select("on")
        except nativesend.NativeMissing as e:
            fail(f"configuration error: {e}")
    hub = Hub(reactor, settings.hub.max_event_bytes, settings.hub.max_queue_batches,
              settings.hub.max_queue_bytes)
    try:
        supervisor = Supervisor(reactor, settings, hub, shard_argv, os.environ)
    except configmod.ConfigError as e:
        fail(f"configuration error: {e}")
    guard = Guard(reactor, lambda: [os.getpid(), *supervisor.pids()], read_budget(), settings)

    def shards() -> list[ShardHandle]:
        return supervisor.shards

    admission = Admission(reactor.seconds, guard, settings, shards)
    coverage = GroupCoverage(reactor, settings, shards)
    health = Health(settings, shards, admission, guard, coverage)
    scrape = MetricsScrape(reactor, shards, settings)
    static_dir = os.path.join(os.path.dirname(__file__), "static")
    dispatchers = [Dispatcher(reactor, settings, shards, health=health,
                              static_dir=static_dir if settings.demo.enabled else None,
                              tls=tls_options is not None, admission=admission,
                              scrape=scrape)]
    public = serverFromString(reactor, settings.listen.port)
    capped = backlog.capped(public, backlog.somaxconn())
    if capped is not None:
        Logger(namespace="odin_ws.parent.backlog").warn("{message}", message=capped)
    listeners = [StreamServerEndpointService(public, dispatchers[0])]
    holders: list = [health, guard, admission, supervisor, coverage]
    if settings.listen.admin_port:
        # A door of its own: heads held on the public port (a flood of
        # partial heads fills listen.max_heads) must not shut /health and
        # /metrics here. Draining and readiness are the node's (Health).
        admin_door = Admission(reactor.seconds, settings=settings)
        holders.append(admin_door)
        dispatchers.append(Dispatcher(reactor, settings, shards, health=health, admin=True,
                                      admission=admin_door, scrape=scrape))
        listeners.append(StreamServerEndpointService(
            serverFromString(reactor, settings.listen.admin_port), dispatchers[1]))
    for listener in listeners:
        # A port that cannot be bound fails the start (twistd exits), not a log line.
        twisted_internals.raise_listen_errors(listener)
    systemd = SystemdNotifier.from_environ(reactor, os.environ, os.getpid(),
                                           starting=lambda: admission.starting, shards=shards)
    node = Node(reactor, settings, supervisor=supervisor, listeners=listeners,
                dispatchers=dispatchers, admission=admission, guard=guard,
                holders=[*dispatchers, *holders],
                load_settings=options.load, check_keys=check_keys, systemd=systemd)
    coverage.setServiceParent(node)
    return node


class ShardOptions(usage.Options):
    synopsis = "--index N (started by the odinws parent; not for direct use)"
    optParameters = [
        ["index", None, None, "Shard number.", int],
        ["control-fd", None, 3, "Inherited Unix socket to the parent.", int],
        ["config-fd", None, SHARD_CONFIG_FD, "Inherited pipe the parent writes the "
         "configuration to (never the environment: it may hold secrets).", int],
    ]

    def postOptions(self):
        if self["index"] is None:
            raise usage.UsageError("--index is required")
        try:
            text = read_config(self["config-fd"])
        except (OSError, UnicodeDecodeError) as e:
            fail(f"odinws-shard is started by the odinws parent (no configuration on fd "
                 f"{self['config-fd']}: {e})")
        if not text:
            fail(f"odinws-shard is started by the odinws parent (no configuration on fd "
                 f"{self['config-fd']})")
        try:
            self.settings = Settings.from_config(configmod.Config.from_json(text))
        except (ValueError, configmod.ConfigError) as e:
            fail(f"shard configuration error: {e}")


def makeShardService(options, reactor=None) -> service.IService:
    if reactor is None:
        reactor = _reactor()
    from odin_ws.shard.service import Shard
    return Shard(reactor, options.settings, options["index"], options["control-fd"])
