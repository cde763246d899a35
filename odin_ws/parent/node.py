"""
The parent process's top service: the supervisor and the listeners under
one MultiService that starts and stops them in the order an operator wants,
and the one path by which SIGHUP reaches every parent component and shard.
"""

from __future__ import annotations

import signal
from collections.abc import Callable

from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger

from odin_ws.common import commands, openfiles
from odin_ws.common import config as configmod
from odin_ws.common.logs import audit, install_logging
from odin_ws.common.settings import Settings
from odin_ws.parent.systemd import SystemdNotifier

log = Logger()


class Node(service.MultiService):
    """
    The parent process. Stops in the order an operator wants: stop
    accepting (and say so in /health), drain and stop the shards, then close
    the listeners. SIGHUP re-reads the configuration.

    @param settings: the settings the node started with.
    @param load_settings: reads the configuration again (file, environment,
        the command line's flags on top), for a reload.
    @param check_keys: raises L{configmod.ConfigError} for keys and
        certificates of these settings a shard would refuse.
    @param systemd: tells systemd about readiness, status, the watchdog and
        the drain (L{odin_ws.parent.systemd}); None when not run by systemd.
    @param holders: every parent component that holds settings (both
        dispatchers, health, guard, admission, supervisor); each has
        C{reconfigure(settings)}, called with the reloaded L{Settings}.
    """

    def __init__(self, reactor, settings: Settings, *, supervisor, listeners,
                 dispatchers, admission, guard, holders,
                 load_settings: Callable[[], Settings],
                 check_keys: Callable[[Settings], object],
                 systemd: SystemdNotifier | None = None):
        super().__init__()
        self.reactor = reactor
        self._settings = settings
        self.supervisor = supervisor
        self.listeners = listeners
        self.dispatchers = dispatchers
        self.admission = admission
        self.guard = guard
        self.holders = holders
        self._load_settings = load_settings
        self._check_keys = check_keys
        self.systemd = systemd
        supervisor.setServiceParent(self)
        for listener in listeners:
            listener.setServiceParent(self)

    def setServiceParent(self, parent):
        super().setServiceParent(parent)
        install_logging(self._settings.log, parent)

    def startService(self):
        # Before the shards start: they inherit the limit.
        openfiles.ensure(openfiles.needed(self._settings))
        files = openfiles.status(self._settings)
        (log.warn if files.capped else log.info)("{message}", message=files.message())
        # The startup grace (waiting for every shard to register) counts from here.
        self.admission.node_started()
        super().startService()
        self.guard.start()
        if self.systemd is not None:
            self.systemd.start()
        signal.signal(signal.SIGHUP, lambda *_: self.reactor.callFromThread(self.reload))

    @property
    def settings(self) -> Settings:
        """The settings in force (replaced by L{reload})."""
        return self._settings

    def reload(self) -> None:
        """
        Re-read file and environment (flags still win); apply what can change
        live. The one reload path: one L{Settings} is built and handed to
        every holder, and the applied configuration to every alive shard.
        """
        try:
            new = self._load_settings()
        except configmod.ConfigError as e:
            audit.error("reload refused: {e}", e=str(e))
            return
        settings, live, restart = configmod.apply_live(self._settings, new)
        try:
            # As at start-up: keys and certificates the shards would refuse
            # refuse the whole reload (and restarted shards could not start).
            self._check_keys(settings)
        except configmod.ConfigError as e:
            audit.error("reload refused: {e}", e=str(e))
            return
        self._settings = settings
        # The supervisor is one of the holders: shards started from now on
        # (restarts after a crash) get the reloaded configuration too.
        for holder in self.holders:
            holder.reconfigure(settings)
        blob = settings.config.to_json().encode()
        for handle in self.supervisor.shards:
            if handle.alive:
                handle.call(commands.Reload, config=blob).addErrback(
                    lambda f, i=handle.index: log.warn("shard {i} did not reload: {f}",
                                                       i=i, f=f.getErrorMessage()))
        audit.info("configuration reloaded; applied live: {live}; needs a restart: {restart}",
                   live=", ".join(live) or "none", restart=", ".join(restart) or "none")

    @defer.inlineCallbacks
    def stopService(self):
        self.admission.stop_accepting()
        if self.systemd is not None:
            self.systemd.stopping()
        service.Service.stopService(self)
        self.guard.stop()
        yield self.supervisor.stopService()
        for listener in self.listeners:
            yield listener.stopService()
        for dispatcher in self.dispatchers:
            yield dispatcher.close()
        if self.systemd is not None:
            self.systemd.stop()
