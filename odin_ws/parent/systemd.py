"""
The parent's side of systemd's notification protocol (sd_notify(3)), for a
unit with C{Type=notify} and C{WatchdogSec=}: the parent tells systemd when
the node is ready (every shard registered, or the startup grace passed: the
moment C{/health} stops saying C{starting}), what it is doing (C{STATUS=}:
shards and connections), that its reactor still turns (C{WATCHDOG=1}, so a
stalled parent is killed and restarted by systemd), and that it is stopping
(C{STOPPING=1}, at the start of the drain).

The protocol is one datagram per message, newline-separated C{KEY=VALUE}
fields, sent to the Unix socket named by C{$NOTIFY_SOCKET} (a path, or an
abstract-namespace name written with a leading C{@}). It is written here
directly (a few lines) rather than through a library: python-systemd
needs libsystemd's headers to build, and the pure-Python packages on PyPI
add nothing to C{sendto}. Without C{$NOTIFY_SOCKET} (not started by
systemd, or C{Type=simple}) nothing is sent and nothing changes.

The pings come from a timer of the parent's reactor, so they stop exactly
when the reactor stops turning; shards are not watched this way (the
supervisor watches them through their C{Stats} reports) and never see the
variables (L{odin_ws.common.launch.shard_environment}).
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from twisted.internet import task
from twisted.logger import Logger

log = Logger()

#: Seconds between two looks at readiness and status: READY=1 reaches
#: systemd at most this long after the last shard registered.
STATUS_INTERVAL = 1.0


class ShardView(Protocol):
    """What the notifier reads of a shard handle."""

    @property
    def alive(self) -> bool: ...

    @property
    def connections(self) -> int: ...


class NotifySocket:
    """
    A datagram socket that sends to systemd's notification socket.
    Sending never blocks and never raises: systemd not listening (any more)
    is logged once, and the service goes on.
    """

    def __init__(self, address: str):
        # "@name" is Linux's abstract namespace: a leading NUL byte.
        self._address = "\0" + address[1:] if address.startswith("@") else address
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self._sock.setblocking(False)
        self._failing = False

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> NotifySocket | None:
        """The socket C{$NOTIFY_SOCKET} names, or None when unset (or of a kind not supported)."""
        address = environ.get("NOTIFY_SOCKET", "")
        if not address:
            return None
        if address[0] not in "/@":
            # systemd 253+ also names AF_VSOCK sockets ("vsock:CID:PORT").
            log.warn("NOTIFY_SOCKET {address!r} is not a Unix socket; not notifying systemd",
                     address=address)
            return None
        return cls(address)

    def send(self, *fields: str) -> bool:
        """Send C{fields} (C{"KEY=VALUE"}) in one datagram; False if it could not be sent."""
        try:
            self._sock.sendto("\n".join(fields).encode("utf-8"), self._address)
        except OSError as e:
            if not self._failing:
                log.warn("cannot notify systemd on {address!r}: {e}",
                         address=self._address.replace("\0", "@"), e=e)
            self._failing = True
            return False
        self._failing = False
        return True

    def close(self) -> None:
        self._sock.close()


def watchdog_interval(environ: Mapping[str, str], pid: int) -> float | None:
    """
    Seconds between two C{WATCHDOG=1} pings: half of C{$WATCHDOG_USEC}, as
    sd_watchdog_enabled(3) advises; None when the watchdog is off, or meant
    for another process (C{$WATCHDOG_PID}).
    """
    try:
        usec = int(environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    owner = environ.get("WATCHDOG_PID")
    if owner and owner != str(pid):
        return None
    return usec / 2e6


class SystemdNotifier:
    """
    Tells systemd about the node: C{READY=1} once, when C{starting()} turns
    False; C{STATUS=} whenever its text changes (looked at every
    L{STATUS_INTERVAL}); C{WATCHDOG=1} every C{watchdog} seconds while the
    reactor runs; C{STOPPING=1} on L{stopping}.

    @param notify: where the messages go.
    @param watchdog: seconds between pings (L{watchdog_interval}), or None.
    @param starting: True while the node waits for its shards
        (C{Admission.starting}).
    @param shards: returns the current shard handles.
    """

    def __init__(self, reactor: Any, notify: NotifySocket, *, watchdog: float | None,
                 starting: Callable[[], bool], shards: Callable[[], Sequence[ShardView]]):
        self._notify = notify
        self._watchdog = watchdog
        self._starting = starting
        self._shards = shards
        self._state = "starting"
        self._status: str | None = None
        self._status_loop = task.LoopingCall(self.update)
        self._status_loop.clock = reactor
        self._watchdog_loop = task.LoopingCall(self._notify.send, "WATCHDOG=1")
        self._watchdog_loop.clock = reactor

    @classmethod
    def from_environ(cls, reactor: Any, environ: Mapping[str, str], pid: int, *,
                     starting: Callable[[], bool],
                     shards: Callable[[], Sequence[ShardView]]) -> SystemdNotifier | None:
        """A notifier for the socket C{environ} names, or None when there is none."""
        notify = NotifySocket.from_environ(environ)
        if notify is None:
            return None
        return cls(reactor, notify, watchdog=watchdog_interval(environ, pid),
                   starting=starting, shards=shards)

    @property
    def state(self) -> str:
        """C{starting}, C{ready} or C{stopping}: what systemd was last told."""
        return self._state

    def start(self) -> None:
        """Start watching (when the node starts); the first ping and status go out now."""
        if self._watchdog is not None:
            self._watchdog_loop.start(self._watchdog, now=True)
        self._status_loop.start(STATUS_INTERVAL, now=True)

    def status(self) -> str:
        """The C{STATUS=} text: the state, shards alive of all, connections."""
        shards = self._shards()
        alive = [h for h in shards if h.alive]
        connections = sum(h.connections for h in alive)
        return (f"{self._state}: {len(alive)}/{len(shards)} shards alive, "
                f"{connections} connections")

    def update(self) -> None:
        """Say READY=1 if the node just became ready, and the status if it changed."""
        fields = []
        if self._state == "starting" and not self._starting():
            self._state = "ready"
            fields.append("READY=1")
        status = self.status()
        if status != self._status:
            fields.append("STATUS=" + status)
        if fields and self._notify.send(*fields):
            self._status = status

    def stopping(self) -> None:
        """The node begins to drain: STOPPING=1 (the watchdog keeps pinging until L{stop})."""
        if self._status_loop.running:
            self._status_loop.stop()
        self._state = "stopping"
        self._status = self.status()
        self._notify.send("STOPPING=1", "STATUS=" + self._status)

    def stop(self) -> None:
        """The node has stopped: no more pings."""
        for loop in (self._status_loop, self._watchdog_loop):
            if loop.running:
                loop.stop()
        self._notify.close()

