"""
The parent's view of one shard: its state (L{ShardHandle}, read by the
dispatcher and /health) and its end of the AMP control channel
(L{ShardControl}: Register, Stats and Publish from the shard).
"""

from __future__ import annotations

import json
from collections import deque
from typing import Any, Callable

from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure

from odin_ws.common.commands import Deliver, Publish, Register, Stats
from odin_ws.parent.hub import Hub


class ShardUnavailable(Exception):
    """A command was addressed to a shard that is not running and registered."""


class ShardHandle:
    """
    The parent's view of one shard (read by the dispatcher and /health).

    C{alive} means the process runs I{and} has registered over AMP; only
    then is C{amp} usable. C{connections}, C{capacity}, C{accepting} and
    C{status} come from the shard's last Stats report.
    """

    def __init__(self, index: int, cpu: int | None, clock, crash_loop_window: float):
        self.index = index
        self.cpu = cpu
        self.pid: int | None = None
        self.alive = False
        self.accepting = False
        self.connections = 0
        #: Handoffs sent and not yet answered: a Stats report made before the
        #: shard adopted them does not count them, so they are added back.
        self.pending = 0
        self.capacity = 0
        self.restarts = 0
        self.status: dict[str, Any] = {}
        self.amp: ShardControl | None = None
        self.started_at: float | None = None
        self._clock = clock
        self._window = crash_loop_window
        self._crash_looping = False
        self._restart_times: deque[float] = deque()
        self._delay = 0.0
        self._process = None        # IProcessTransport while the process runs
        self._channel: ShardControl | None = None  # connected control channel
        self._restart_call = None
        self._kill_call = None
        self._ready: list[Deferred] = []

    @property
    def running(self) -> bool:
        """The process exists (it may not have registered yet)."""
        return self._process is not None

    @property
    def crash_looping(self) -> bool:
        """Restarted too often lately, and the current run is not yet a healthy one."""
        if not self._crash_looping:
            return False
        healthy = (self.running and self.started_at is not None
                   and self._clock.seconds() - self.started_at > self._window)
        return not healthy

    def as_health(self) -> dict[str, Any]:
        """This shard's entry in /health."""
        return {"index": self.index, "pid": self.pid, "cpu": self.cpu, "alive": self.alive,
                "accepting": self.accepting, "connections": self.connections,
                "capacity": self.capacity, "restarts": self.restarts,
                "crash_looping": self.crash_looping, "kafka": self.status.get("kafka")}

    def call(self, command: type[amp.Command], **kw: Any) -> Deferred:
        """C{callRemote} on this shard; fails with L{ShardUnavailable} unless alive."""
        if not self.alive or self.amp is None:
            return fail(ShardUnavailable(f"shard {self.index} is not running"))
        return self.amp.callRemote(command, **kw)

    def when_registered(self) -> Deferred:
        """Fires with this handle once the shard is alive (now, if it is)."""
        if self.alive:
            return succeed(self)
        d: Deferred = Deferred()
        self._ready.append(d)
        return d

    def _fire_ready(self, result: Any) -> None:
        waiting, self._ready = self._ready, []
        for d in waiting:
            if isinstance(result, Failure):
                d.errback(result)
            else:
                d.callback(result)

    @property
    def _down(self) -> bool:
        return self._process is None and self._channel is None


class ShardControl(amp.AMP):
    """The parent's end of one shard's control channel."""

    log = Logger()

    def __init__(self, handle: ShardHandle, hub: Hub,
                 on_lost: Callable[["ShardControl"], None] = lambda c: None):
        super().__init__()
        self.handle = handle
        self.hub = hub
        self._on_lost = on_lost

    def connectionMade(self) -> None:
        super().connectionMade()
        self.handle._channel = self

    @Register.responder
    def _register(self, index: int, pid: int, capacity: int) -> dict:
        h = self.handle
        if index != h.index or (h.pid is not None and pid != h.pid):
            self.log.warn("shard {index} registered as index {got}, pid {pid} (expected pid "
                          "{expected})", index=h.index, got=index, pid=pid, expected=h.pid)
        h.pid = pid
        h.capacity = capacity
        h.accepting = True
        h.amp = self
        h.alive = True
        self.hub.attach(h.index, self._deliver)
        self.log.info("shard {index} registered (pid {pid}, capacity {capacity})",
                      index=h.index, pid=pid, capacity=capacity)
        h._fire_ready(h)
        return {}

    def _deliver(self, batch: bytes) -> Deferred:
        return self.callRemote(Deliver, batch=batch)

    @Stats.responder
    def _stats(self, connections: int, capacity: int, status: bytes) -> dict:
        h = self.handle
        h.connections = connections + h.pending
        h.capacity = capacity
        try:
            parsed = json.loads(status) if status else {}
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            h.status = parsed
            h.accepting = bool(parsed.get("accepting", True))
        else:
            self.log.warn("shard {index} sent unreadable status {status!r}",
                          index=h.index, status=status[:200])
        return {}

    @Publish.responder
    def _publish(self, batch: bytes) -> dict:
        self.hub.publish(self.handle.index, batch)
        return {}

    def connectionLost(self, reason: Failure) -> None:
        super().connectionLost(reason)
        h = self.handle
        if h.amp is self:
            h.amp = None
            h.alive = False
            h.accepting = False
            self.hub.detach(h.index)
        if h._channel is self:
            h._channel = None
            self._on_lost(self)
