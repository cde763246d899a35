"""
Which per-connection send loop the fan-out runs (C{outbound.native}): the
C one of C{_sendrun.c}, built with the package, or the pure-Python one of
L{odin_ws.shard.delivery.fanout.Fanout.write}.

Why a C loop: at 1,000 subscribers and more, the shard's time per event is
the loop over its connections (attribute reads, C{socket.send} and its
wrapper, counters), about 5 us of Python per connection per write on top of
the kernel's send; the C loop does the same checks and sends in about a
tenth of that (docs/performance.md, "Native send loop"). It only ever
sends to a connection for which nothing waits (empty Outbox, nothing held
by Twisted): everything else is handed back to the Outbox and its policies.

Why optional: a machine without a C compiler or Python's headers still
installs odinws; C{auto} (the default) then runs the Python loop, says so
once in the log and in /health (C{outbound_native}) and C{odinws_outbound_native}.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.logger import Logger

log = Logger()

#: The extension's module (odin_ws/shard/delivery/_sendrun.c).
EXTENSION = "odin_ws.shard.delivery._sendrun"

#: L{NativeSend.state}: the C loop is in use.
NATIVE = "native"
#: L{NativeSend.state}: C{outbound.native: off}.
OFF = "off"
#: L{NativeSend.state}: C{auto}, and the extension could not be loaded.
UNAVAILABLE = "unavailable"

#: C{send_runs(runs, writes) -> (frames, nbytes, whole, rest, defer, plain, wire)}; a
#: run is C{(bufs, frames, outboxes)}, C{bufs} one buffer per variant
#: (L{odin_ws.shard.delivery.deflate}); see _sendrun.c.
SendRuns = Callable[[list[tuple[tuple[bytes | None, ...], int, Any]], set[int]],
                   tuple[int, int, int, list[tuple[Any, bytes, int, int]], list[tuple[Any, int]],
                         int, int]]

_warned = False


class NativeMissing(Exception):
    """C{outbound.native} is C{on} and the extension cannot be loaded."""


@dataclass(frozen=True)
class NativeSend:
    """The loop chosen: C{send_runs} (None: the Python loop) and why (L{state})."""

    send_runs: SendRuns | None
    state: str
    #: Why the extension is not in use, when C{auto} fell back.
    reason: str | None = None


def select(mode: str) -> NativeSend:
    """
    The loop C{outbound.native} (C{mode}: auto, on or off) asks for.

    @raise NativeMissing: C{on}, and the extension cannot be loaded.
    """
    global _warned
    if mode == "off":
        return NativeSend(None, OFF)
    try:
        module = importlib.import_module(EXTENSION)
    except ImportError as e:
        reason = f"{EXTENSION} cannot be loaded: {e}"
        if mode == "on":
            raise NativeMissing(
                f"outbound.native is on, but {reason}. Install odinws with a C compiler and "
                "Python's headers (pip install ., make venv; the Debian package has it built), "
                "or set outbound.native to auto or off.") from e
        if not _warned:
            _warned = True
            log.warn("outbound.native: auto: {reason}; the fan-out runs its pure-Python "
                     "send loop", reason=reason)
        return NativeSend(None, UNAVAILABLE, reason)
    return NativeSend(module.send_runs, NATIVE)
