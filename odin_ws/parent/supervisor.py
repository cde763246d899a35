"""
The supervisor: runs the shard processes of this node.

Each shard gets a Unix socketpair for its AMP control channel (the child's
end becomes its fd 3), is pinned to a CPU, has its stdout/stderr re-logged
line by line (never mixed with the control channel), is restarted with
doubling backoff when it dies, and on stop is drained, then sent SIGTERM,
then SIGKILL. Modelled on L{twisted.runner.procmon}.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

from twisted.application import service
from twisted.internet import error, protocol
from twisted.internet.defer import Deferred, DeferredList, gatherResults
from twisted.logger import Logger
from twisted.python.failure import Failure

from odin_ws.common import metrics
from odin_ws.common.commands import Drain
from odin_ws.common.launch import SHARD_CONFIG_FD, shard_environment
from odin_ws.common.settings import Settings
from odin_ws.parent import affinity
from odin_ws.parent.hub import Hub
from odin_ws.parent.shardhandle import ShardHandle, ShardLink, ShardUnavailable

__all__ = ["Supervisor", "ShardHandle", "ShardLink", "ShardUnavailable"]

#: Longest stdout/stderr line of a shard re-logged whole; longer is cut.
MAX_LINE_BYTES = 4096
#: Output lines per shard and second re-logged; the rest is summarized.
MAX_LINES_PER_SECOND = 200


class _ShardOutput:
    """Re-logs one shard's stdout/stderr lines, bounded in length and rate."""

    def __init__(self, index: int, clock, log: Logger):
        self._index = index
        self._clock = clock
        self._log = log
        self._partial = {"stdout": b"", "stderr": b""}
        self._cut = {"stdout": False, "stderr": False}  # inside an over-long line
        self._window = float("-inf")
        self._count = 0
        self._suppressed = 0
        self._summary = None

    def feed(self, stream: str, data: bytes) -> None:
        lines = (self._partial[stream] + data).split(b"\n")
        rest = lines.pop()
        for line in lines:
            if self._cut[stream]:
                self._cut[stream] = False  # the tail of a line already logged cut
            else:
                self._emit(stream, line)
        if len(rest) > MAX_LINE_BYTES:
            if not self._cut[stream]:
                self._emit(stream, rest)
                self._cut[stream] = True
            rest = b""
        self._partial[stream] = rest

    def close(self) -> None:
        for stream, rest in self._partial.items():
            if rest and not self._cut[stream]:
                self._emit(stream, rest)
        self._partial = {"stdout": b"", "stderr": b""}
        self._summarize()

    def _emit(self, stream: str, line: bytes) -> None:
        now = self._clock.seconds()
        if now - self._window >= 1.0:
            self._summarize()
            self._window = now
            self._count = 0
        if self._count >= MAX_LINES_PER_SECOND:
            self._suppressed += 1
            if self._summary is None:
                self._summary = self._clock.callLater(1.0, self._summarize)
            return
        self._count += 1
        text = line[:MAX_LINE_BYTES].rstrip(b"\r").decode("utf-8", "replace")
        if len(line) > MAX_LINE_BYTES:
            text += f" [cut, line longer than {MAX_LINE_BYTES} bytes]"
        emit = self._log.warn if stream == "stderr" else self._log.info
        emit("shard {index}: {line}", index=self._index, line=text, stream=stream)

    def _summarize(self) -> None:
        if self._summary is not None:
            if self._summary.active():
                self._summary.cancel()
            self._summary = None
        if self._suppressed:
            self._log.warn("shard {index}: {count} output lines not logged (more than "
                           "{limit} a second)", index=self._index, count=self._suppressed,
                           limit=MAX_LINES_PER_SECOND)
            self._suppressed = 0


class _ShardProcess(protocol.ProcessProtocol):
    """Watches one shard process: its output and its end."""

    def __init__(self, handle: ShardHandle, output: _ShardOutput,
                 ended: Callable[[ShardHandle, Any, Failure], None]):
        self._handle = handle
        self._output = output
        self._ended = ended

    def outReceived(self, data: bytes) -> None:
        self._output.feed("stdout", data)

    def errReceived(self, data: bytes) -> None:
        self._output.feed("stderr", data)

    def processEnded(self, reason: Failure) -> None:
        self._output.close()
        self._ended(self._handle, self.transport, reason)


class Supervisor(service.Service):
    """
    Runs C{settings.shards} shard processes, restarts them, stops them.

    The state of each shard is its L{ShardHandle}'s; the supervisor owns
    only its timers (pending restarts, SIGKILLs due) and the environment and
    configuration shards start with.

    @param settings: the node's settings; shards start with their
        configuration (C{settings.config}, as JSON written to the pipe on the
        shard's fd L{SHARD_CONFIG_FD}, never its environment: it holds secrets).
    @param argv_for: the full argv of shard i, executable first.
    @param env: the environment of every shard, without the C{ODINWS_*}
        setting overrides (L{shard_environment}).
    @param allowed_cpus: the CPUs the parent may use (for tests).
    @param pin: pins a pid to a CPU (for tests).
    @raise odin_ws.common.config.ConfigError: C{cpu_affinity} names a CPU the
        parent may not use.
    """

    log = Logger()

    def __init__(self, reactor, settings: Settings, hub: Hub,
                 argv_for: Callable[[int], list[str]], env: Mapping[str, str], *,
                 allowed_cpus: Callable[[], list[int] | None] = affinity.allowed_cpus,
                 pin: Callable[[int, int], None] = affinity.pin):
        self._reactor = reactor
        self._settings = settings.supervisor
        self.hub = hub
        self._argv_for = argv_for
        self._env = shard_environment(env)
        self._config = settings.config.to_json().encode("utf-8")
        self._pin = pin
        count = settings.shards
        setting = settings.cpu_affinity
        allowed = allowed_cpus()
        cpus = affinity.assign(setting, count, allowed)
        pinned = {c for c in cpus if c is not None}
        if setting == "auto" and allowed is None:
            self.log.info("cpu_affinity: this platform cannot pin processes; not pinning")
        elif pinned and len(pinned) < count:
            self.log.info("cpu_affinity: {shards} shards share {cpus} CPUs",
                          shards=count, cpus=len(pinned))
        self.shards: list[ShardHandle] = [ShardHandle(i, cpus[i], reactor, self._settings)
                                          for i in range(count)]
        for h in self.shards:
            # Exported at 0 from the start: an alert on increase() sees the first restart.
            metrics.SHARD_RESTARTS.labels(shard=str(h.index))
        self._restart_calls: dict[int, Any] = {}  # shard index -> IDelayedCall
        self._kill_calls: dict[int, Any] = {}
        self._all_down: Deferred | None = None
        self._stopping: Deferred | None = None

    def reconfigure(self, settings: Settings) -> None:
        """
        A reload: the supervisor's settings, and the configuration shards
        started from now on (restarts after a crash) get, not the one of the
        parent's start-up: else a key or certificate retired by the reload
        would come back with them.
        """
        self._settings = settings.supervisor
        for h in self.shards:
            h.reconfigure(self._settings)
        self._config = settings.config.to_json().encode("utf-8")

    def snapshot(self) -> list[dict[str, Any]]:
        """Every shard's health entry, in index order."""
        return [h.as_health() for h in self.shards]

    def pids(self) -> list[int]:
        """The pids of the shard processes running now."""
        return [h.pid for h in self.shards if h.pid]

    def wait_all_registered(self) -> Deferred:
        """Fires with the handles once every shard is alive."""
        return gatherResults([h.when_registered() for h in self.shards], consumeErrors=True)

    # -- starting ---------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._stopping = None
        for h in self.shards:
            h.reset_backoff()
            self._start(h)

    def _start(self, h: ShardHandle) -> None:
        self._restart_calls.pop(h.index, None)
        if not self.running:
            return
        try:
            process = self._spawn(h)
        except OSError:
            # Out of fds or processes: retried with backoff, like a crash.
            self.log.failure("shard {index}: could not start", index=h.index)
            h.abort_channel()
            self._schedule_restart(h, uptime=0.0)
            return
        h.started(process)
        self.log.info("shard {index} started (pid {pid}, cpu {cpu})",
                      index=h.index, pid=h.pid, cpu=h.cpu)
        if h.cpu is not None and h.pid is not None:
            try:
                self._pin(h.pid, h.cpu)
            except OSError as e:
                self.log.warn("shard {index}: cannot pin pid {pid} to CPU {cpu}: {why}",
                              index=h.index, pid=h.pid, cpu=h.cpu, why=e)

    def _spawn(self, h: ShardHandle):
        """Create the control channel, adopt our end, spawn the child with the other."""
        parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            # O_NONBLOCK lives on the shared file description, so the child's
            # fd 3 is non-blocking too, as adoptStreamConnection requires.
            child_end.setblocking(False)
            parent_end.setblocking(False)
            factory = protocol.Factory.forProtocol(
                partial(ShardLink, h, self.hub, self._channel_lost))
            self._reactor.adoptStreamConnection(parent_end.fileno(), socket.AF_UNIX, factory)
            argv = self._argv_for(h.index)
            proto = _ShardProcess(h, _ShardOutput(h.index, self._reactor, self.log),
                                  self._process_ended)
            process = self._reactor.spawnProcess(
                proto, argv[0], argv, env=self._env,
                childFDs={0: "w", 1: "r", 2: "r", 3: child_end.fileno(),
                          SHARD_CONFIG_FD: "w"})
            # Written by the reactor as the child reads; closed after, so it reads to the end.
            process.writeToChild(SHARD_CONFIG_FD, self._config)
            process.closeChildFD(SHARD_CONFIG_FD)
            return process
        finally:
            # The reactor adopted a duplicate of our end; the child got its own.
            parent_end.close()
            child_end.close()

    # -- exits and restarts -----------------------------------------------

    def _process_ended(self, h: ShardHandle, transport, reason: Failure) -> None:
        uptime = h.exited(transport)
        if uptime is None:
            return
        kill = self._kill_calls.pop(h.index, None)
        if kill is not None and kill.active():
            kill.cancel()
        how = _describe_exit(reason)
        if self.running:
            self.log.warn("shard {index} {how} after {uptime:.1f}s", index=h.index, how=how,
                          uptime=uptime)
            self._schedule_restart(h, uptime)
        else:
            self.log.info("shard {index} {how}", index=h.index, how=how)
        # The peer is dead: nothing left to flush, and a copy of its end
        # leaked to a grandchild must not keep the channel open.
        h.abort_channel()
        self._check_down()

    def _schedule_restart(self, h: ShardHandle, uptime: float) -> None:
        if not self.running:
            return
        delay = h.next_delay(uptime)
        self.log.info("shard {index} restarts in {delay:.1f}s", index=h.index, delay=delay)
        self._restart_calls[h.index] = self._reactor.callLater(delay, self._restart, h)

    def _restart(self, h: ShardHandle) -> None:
        metrics.SHARD_RESTARTS.labels(shard=str(h.index)).inc()
        if h.restarted():
            self.log.error("shard {index} is crash-looping ({n} restarts in {window:g}s)",
                           index=h.index, n=h.recent_restarts,
                           window=self._settings.crash_loop_window)
        self._start(h)

    def _channel_lost(self, link: ShardLink) -> None:
        h = link.handle
        if h.running and self.running:
            # A shard without its control channel can serve nobody (and
            # exits by itself); make sure it does, then restart it.
            self.log.warn("shard {index}: control channel lost; stopping it", index=h.index)
            self._terminate(h)
        self._check_down()

    # -- stopping ---------------------------------------------------------

    def stopService(self) -> Deferred:
        """Drain, then TERM, then KILL; fires when every shard has exited."""
        if self._stopping is not None:
            return self._stopping
        super().stopService()
        for call in self._restart_calls.values():
            if call.active():
                call.cancel()
        self._restart_calls.clear()
        for h in self.shards:
            h.fail_waiters(Failure(ShardUnavailable(f"shard {h.index}: supervisor stopped")))
        d = self._drain()
        d.addCallback(lambda _: self._terminate_all())
        self._stopping = d
        return d

    def _drain(self) -> Deferred:
        timeout = self._settings.drain_timeout
        calls = []
        for h in self.shards:
            if not (h.alive and timeout > 0):
                continue
            call = h.call(Drain, window=timeout / 2)
            call.addTimeout(timeout, self._reactor)
            call.addCallbacks(self._drained, self._drain_failed, callbackArgs=(h,),
                              errbackArgs=(h, timeout))
            calls.append(call)
        return DeferredList(calls)

    def _drained(self, result: dict, h: ShardHandle) -> None:
        self.log.info("shard {index} drained ({closed} connections closed)",
                      index=h.index, closed=result["closed"])

    def _drain_failed(self, reason: Failure, h: ShardHandle, timeout: float) -> None:
        if reason.check(error.TimeoutError):
            self.log.warn("shard {index} did not drain within {timeout:g}s", index=h.index,
                          timeout=timeout)
        else:
            self.log.warn("shard {index}: drain failed: {why}", index=h.index,
                          why=reason.getErrorMessage())

    def _terminate_all(self) -> Deferred:
        self._all_down = Deferred()
        for h in self.shards:
            if h.running:
                self._terminate(h)
        all_down = self._all_down
        self._check_down()
        return all_down

    def _terminate(self, h: ShardHandle) -> None:
        if h.index in self._kill_calls:
            return  # already on its way out
        h.signal("TERM")
        self._kill_calls[h.index] = self._reactor.callLater(
            self._settings.kill_timeout, self._kill, h)

    def _kill(self, h: ShardHandle) -> None:
        del self._kill_calls[h.index]
        if h.running:
            self.log.warn("shard {index} ignored SIGTERM; sending SIGKILL", index=h.index)
            h.signal("KILL")

    def _check_down(self) -> None:
        if self._all_down is not None and all(h.down for h in self.shards):
            d, self._all_down = self._all_down, None
            self.log.info("all shards stopped")
            d.callback(None)


def _describe_exit(reason: Failure) -> str:
    value = reason.value
    if getattr(value, "signal", None):
        return f"was killed by signal {value.signal}"
    code = getattr(value, "exitCode", None)
    return f"exited with status {code}" if code is not None else f"ended: {value}"
