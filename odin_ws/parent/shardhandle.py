"""
The parent's view of one shard: its state (L{ShardHandle}, the one owner of
it; the dispatcher, /health and the supervisor read it and change it only
through its methods) and the parent's end of the shard's AMP control channel
(L{ShardLink}: Register, Stats and Publish from the shard).
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.internet import error
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import ITCPTransport
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure

from odin_ws.common.backoff import Backoff
from odin_ws.common.commands import Deliver, Publish, Register, Stats
from odin_ws.common.settings import SupervisorSettings
from odin_ws.parent.hub import Hub


class ShardUnavailable(Exception):
    """A command was addressed to a shard that is not running and registered."""


class ShardHandle:
    """
    The parent's view of one shard, and the one owner of that state.

    C{alive} means the process runs I{and} has registered over AMP; only
    then is C{link} usable. C{connections}, C{capacity}, C{accepting} and
    C{status} come from the shard's last Stats report, plus the handoffs in
    flight (L{reserve}). A shard that neither reported nor answered a
    handoff for C{stats_stale_after} seconds (stopped, hung, its channel
    stuck) is C{stalled} and not C{accepting}; one with C{max_handoffs_in_flight}
    handoffs unanswered is C{saturated}. Everything is read-only from outside; the
    supervisor reports the process's life (L{started}, L{exited}, L{restarted},
    L{next_delay}), the L{ShardLink} the channel's (L{channel_opened},
    L{registered}, L{reported}, L{channel_closed}), the dispatcher its
    placements (L{reserve}, L{handoff_done}, L{handoff_failed}).

    @param settings: restart backoff and crash-loop detection.
    """

    def __init__(self, index: int, cpu: int | None, clock, settings: SupervisorSettings):
        self._index = index
        self._cpu = cpu
        self._clock = clock
        self._settings = settings
        self._pid: int | None = None
        self._alive = False
        self._accepting = False
        self._connections = 0
        #: Handoffs sent and not yet answered: a Stats report made before the
        #: shard adopted them does not count them, so they are added back.
        self._pending = 0
        self._capacity = 0
        self._restarts = 0
        #: When the shard last registered, reported or answered a handoff: its
        #: liveness as the parent sees it.
        self._last_report: float | None = None
        self._status: dict[str, Any] = {}
        self._started_at: float | None = None
        #: When the current process registered (None: not yet).
        self._registered_at: float | None = None
        #: How long the last process was up (registered) when it died.
        self._was_up = 0.0
        self._process = None                    # IProcessTransport while the process runs
        self._channel: ShardLink | None = None  # connected control channel
        self._link: ShardLink | None = None     # the channel the shard registered on
        self._backoff = Backoff(settings.restart_min_delay, settings.restart_max_delay)
        self._restart_times: deque[float] = deque()
        self._crash_looping = False
        self._ready: list[Deferred] = []

    def reconfigure(self, settings: SupervisorSettings) -> None:
        """New backoff settings (taken at the next restart)."""
        self._settings = settings
        self._backoff.bounds(settings.restart_min_delay, settings.restart_max_delay)

    # -- read-only view ---------------------------------------------------

    @property
    def index(self) -> int:
        """The shard number."""
        return self._index

    @property
    def cpu(self) -> int | None:
        """The CPU the shard is pinned to, or None."""
        return self._cpu

    @property
    def pid(self) -> int | None:
        return self._pid

    @property
    def alive(self) -> bool:
        """The process runs and has registered over AMP."""
        return self._alive

    @property
    def accepting(self) -> bool:
        """Alive, says it accepts, and has reported lately (not L{stalled})."""
        return self._accepting and not self.stalled

    @property
    def stalled(self) -> bool:
        """
        Alive, but neither a Stats report nor a handoff answer for
        C{stats_stale_after} seconds: stopped (SIGSTOP), hung, or too busy to
        serve a handoff in time. (A shard deep in a reconnection storm may
        send its Stats late, but each handoff it answers shows it is serving.)
        """
        return (self._alive and self._last_report is not None
                and self._clock.seconds() - self._last_report > self._settings.stats_stale_after)

    @property
    def saturated(self) -> bool:
        """C{max_handoffs_in_flight} handoffs sent and not yet answered: no more for now."""
        return self._pending >= self._settings.max_handoffs_in_flight

    @property
    def connections(self) -> int:
        """The shard's last reported connections plus the handoffs in flight."""
        return self._connections

    @property
    def pending(self) -> int:
        """Handoffs to this shard sent and not yet answered."""
        return self._pending

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def restarts(self) -> int:
        return self._restarts

    @property
    def status(self) -> dict[str, Any]:
        """The status document of the shard's last Stats report."""
        return self._status

    @property
    def link(self) -> ShardLink | None:
        """The control channel the shard registered on, while it is alive."""
        return self._link

    @property
    def running(self) -> bool:
        """The process exists (it may not have registered yet)."""
        return self._process is not None

    @property
    def down(self) -> bool:
        """Neither the process nor its control channel is left."""
        return self._process is None and self._channel is None

    @property
    def crash_looping(self) -> bool:
        """Restarted too often lately, and the current run is not yet a healthy one."""
        if not self._crash_looping:
            return False
        healthy = (self.running and self._started_at is not None
                   and self._clock.seconds() - self._started_at > self._settings.crash_loop_window)
        return not healthy

    def as_health(self) -> dict[str, Any]:
        """This shard's entry in /health."""
        return {"index": self._index, "pid": self._pid, "cpu": self._cpu, "alive": self._alive,
                "accepting": self.accepting, "stalled": self.stalled,
                "connections": self._connections,
                "capacity": self._capacity, "restarts": self._restarts,
                "crash_looping": self.crash_looping, "kafka": self._status.get("kafka"),
                "warmup": self._status.get("warmup"), "registry": self._status.get("registry"),
                # The shard's send loop: native, off, or unavailable (outbound.native).
                "outbound_native": self._status.get("outbound_native")}

    # -- commands to the shard --------------------------------------------

    def call(self, command: type[amp.Command], **kw: Any) -> Deferred:
        """C{callRemote} on this shard; fails with L{ShardUnavailable} unless alive."""
        if not self._alive or self._link is None:
            return fail(ShardUnavailable(f"shard {self._index} is not running"))
        return self._link.callRemote(command, **kw)

    def when_registered(self) -> Deferred:
        """Fires with this handle once the shard is alive (now, if it is)."""
        if self._alive:
            return succeed(self)
        d: Deferred = Deferred()
        self._ready.append(d)
        return d

    def fail_waiters(self, reason: Failure) -> None:
        """Fail every L{when_registered} waiter (the supervisor stopped)."""
        self._fire_ready(reason)

    def _fire_ready(self, result: Any) -> None:
        waiting, self._ready = self._ready, []
        for d in waiting:
            if isinstance(result, Failure):
                d.errback(result)
            else:
                d.callback(result)

    # -- the process (reported by the supervisor) -------------------------

    def started(self, process) -> None:
        """A new process runs (an C{IProcessTransport})."""
        self._process = process
        self._pid = process.pid
        self._started_at = self._clock.seconds()
        self._registered_at = None

    def exited(self, process) -> float | None:
        """
        C{process} ended: the shard serves nobody any more. Returns how long
        it ran, or None when C{process} is not the current one (a late report).
        """
        if process is not self._process:
            return None
        now = self._clock.seconds()
        self._was_up = now - self._registered_at if self._registered_at is not None else 0.0
        self._registered_at = None
        self._process = None
        self._pid = None
        self._alive = False
        self._accepting = False
        self._connections = 0
        # Its Kafka status (assigned partitions, warm-up) died with it: a
        # restarted shard shows none until its own first report.
        self._status = {}
        return now - (self._started_at or 0.0)

    def signal(self, sig: str) -> None:
        """Send C{sig} (C{"TERM"}, C{"KILL"}) to the process, if it still runs."""
        if self._process is None:
            return
        try:
            self._process.signalProcess(sig)
        except error.ProcessExitedAlready:
            pass  # processEnded is on its way

    def abort_channel(self) -> None:
        """Close the control channel at once, if it is connected."""
        if self._channel is not None and self._channel.transport is not None:
            self._channel.transport.abortConnection()

    def reset_backoff(self) -> None:
        """Start the backoff over (the supervisor starts)."""
        self._backoff.reset()

    def next_delay(self, uptime: float) -> float:
        """
        The delay before restarting a process that ran C{uptime} seconds.
        A shard that had been up (registered) for C{restart_reset_after}
        died as a running shard (killed, OOM): unless it is crash-looping it
        comes back at once, however recent its last crash was, and the
        doubling starts over (Twisted's procmon does the same after its 1 s
        threshold). One that died sooner (it could not start, or failed
        right after) or while crash-looping waits C{restart_min_delay},
        then twice the previous delay, up to C{restart_max_delay}. A run
        longer than C{crash_loop_window} forgets earlier crashes altogether.
        """
        s = self._settings
        if uptime > s.crash_loop_window:
            self._restart_times.clear()
            self._crash_looping = False
        was_up, self._was_up = self._was_up, 0.0   # a spawn that fails next was up for nothing
        if uptime > s.crash_loop_window or (
                was_up >= s.restart_reset_after and not self._crash_looping):
            self._backoff.reset()
            return 0.0
        return self._backoff.next()

    def restarted(self) -> bool:
        """
        Count a restart. True when it makes the shard crash-looping
        (C{crash_loop_restarts} within C{crash_loop_window}) and it was not yet.
        """
        s = self._settings
        now = self._clock.seconds()
        self._restarts += 1
        self._restart_times.append(now)
        while now - self._restart_times[0] > s.crash_loop_window:
            self._restart_times.popleft()
        if len(self._restart_times) < s.crash_loop_restarts or self._crash_looping:
            return False
        self._crash_looping = True
        return True

    @property
    def recent_restarts(self) -> int:
        """Restarts within the last C{crash_loop_window}."""
        return len(self._restart_times)

    # -- the control channel (reported by the ShardLink) ------------------

    def channel_opened(self, link: ShardLink) -> None:
        self._channel = link

    def registered(self, link: ShardLink, pid: int, capacity: int) -> None:
        """The shard registered on C{link}: it is alive and accepts."""
        self._registered_at = self._clock.seconds()
        self._pid = pid
        self._capacity = capacity
        self._accepting = True
        self._last_report = self._clock.seconds()
        self._link = link
        self._alive = True
        self._fire_ready(self)

    def reported(self, connections: int, capacity: int, status: dict | None) -> None:
        """A Stats report; C{status} None when it was unreadable (kept as it was)."""
        self._connections = connections + self._pending
        self._capacity = capacity
        self._last_report = self._clock.seconds()
        if status is not None:
            self._status = status
            self._accepting = bool(status.get("accepting", True))

    def channel_closed(self, link: ShardLink) -> tuple[bool, bool]:
        """
        C{link} closed. Returns C{(was the registered link, was the current
        channel)}: the first means the shard is no longer alive, the second
        that its process has no channel left.
        """
        was_link = self._link is link
        if was_link:
            self._link = None
            self._alive = False
            self._accepting = False
        was_channel = self._channel is link
        if was_channel:
            self._channel = None
        return was_link, was_channel

    # -- placement (reported by the dispatcher) ---------------------------

    def reserve(self) -> None:
        """
        A connection is being handed over: count it now, so the next placement
        sees it. It stays counted (and in flight) until the handoff call
        completes, L{handoff_done} or L{handoff_failed}, however long that
        takes: the client may have been let go of, but the descriptor and the
        message are still on their way to the shard.
        """
        self._connections += 1
        self._pending += 1

    def handoff_done(self) -> None:
        """The shard adopted a reserved connection (its next report counts it): it is alive."""
        self._pending = max(0, self._pending - 1)
        self._last_report = self._clock.seconds()

    def handoff_failed(self) -> None:
        """A reserved connection's handoff call failed: the slot is free again."""
        self._pending = max(0, self._pending - 1)
        self._connections = max(0, self._connections - 1)


class ShardLink(amp.AMP):
    """The parent's link to one shard: its end of that shard's control channel."""

    log = Logger()
    #: The adopted Unix socket of the channel (a stream transport, so it can be aborted).
    transport: ITCPTransport | None

    def __init__(self, handle: ShardHandle, hub: Hub,
                 on_lost: Callable[[ShardLink], None] = lambda link: None):
        super().__init__()
        self.handle = handle
        self.hub = hub
        self._on_lost = on_lost

    def connectionMade(self) -> None:
        super().connectionMade()
        self.handle.channel_opened(self)

    @Register.responder
    def _register(self, index: int, pid: int, capacity: int) -> dict:
        h = self.handle
        if index != h.index or (h.pid is not None and pid != h.pid):
            self.log.warn("shard {index} registered as index {got}, pid {pid} (expected pid "
                          "{expected})", index=h.index, got=index, pid=pid, expected=h.pid)
        self.hub.attach(h.index, self._deliver)
        self.log.info("shard {index} registered (pid {pid}, capacity {capacity})",
                      index=h.index, pid=pid, capacity=capacity)
        h.registered(self, pid, capacity)
        # Taken in the turn that attached it: every later batch reaches the
        # shard as a Deliver, every earlier one is in these marks.
        return {"marks": self.hub.relayed()}

    def _deliver(self, batch: bytes) -> Deferred:
        return self.callRemote(Deliver, batch=batch)

    @Stats.responder
    def _stats(self, connections: int, capacity: int, status: bytes) -> dict:
        try:
            parsed = json.loads(status) if status else {}
        except ValueError:
            parsed = None
        if not isinstance(parsed, dict):
            self.log.warn("shard {index} sent unreadable status {status!r}",
                          index=self.handle.index, status=status[:200])
            parsed = None
        self.handle.reported(connections, capacity, parsed)
        return {}

    @Publish.responder
    def _publish(self, batch: bytes) -> dict:
        self.hub.publish(self.handle.index, batch)
        return {}

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        super().connectionLost(reason)
        was_link, was_channel = self.handle.channel_closed(self)
        if was_link:
            self.hub.detach(self.handle.index)
        if was_channel:
            self._on_lost(self)
