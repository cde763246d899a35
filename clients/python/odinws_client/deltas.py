"""
Deltas on one connection (docs/protocol.md, "Deltas" and "Compact
deltas"): what a delta event is made whole against. A merge-patch delta
applies to its channel's last data; a compact delta to its stream's last
event (a stream starts with a whole event carrying its ``sid``). A new
connection starts every channel and stream whole again (L{Deltas.clear}).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from odinws_client import compactdelta
from odinws_client.mergepatch import apply_merge_patch
from odinws_client.messages import ServerError


class Deltas:
    """
    The bases of one connection's deltas.

    @param report: told of a delta with nothing to apply it to (reported,
        not guessed: the server sends each channel's first event whole).
    """

    def __init__(self, report: Callable[[ServerError], None]) -> None:
        self._report = report
        #: channel -> the data of its last event: what a delta applies to.
        self._bases: dict[str, Any] = {}
        #: compact stream id -> its last event: what a compact delta applies to.
        self._streams: dict[int, dict[str, Any]] = {}

    def clear(self) -> None:
        """The connection is gone: the next one starts every channel with a whole event."""
        self._bases.clear()
        self._streams.clear()

    def whole(self, msg: dict[str, Any], keep_bases: bool) -> dict[str, Any] | None:
        """
        An event message made whole (RFC 7386 against its channel's last
        data); with ``keep_bases`` (a subscription holds deltas) its data is
        the channel's next base. None: a delta with no base.
        """
        channel = msg.get("channel")
        if "delta" in msg:
            if channel not in self._bases:
                self._report(ServerError("delta_without_base",
                                         f"a delta of {channel} before any whole event"))
                return None
            patch = msg["delta"]
            msg = {k: v for k, v in msg.items() if k != "delta"}
            msg["data"] = apply_merge_patch(self._bases[channel], patch)
        if isinstance(channel, str) and keep_bases:
            self._bases[channel] = msg.get("data")
        if (type(msg.get("sid")) is int and type(msg.get("ts")) is int
                and isinstance(msg.get("pos"), str)):
            self._streams[msg["sid"]] = compactdelta.stream_start(msg)
        return msg

    def compact(self, frame: list[Any]) -> dict[str, Any] | None:
        """
        The event a compact delta stands for, rebuilt against its stream's
        previous event. None: one of a stream no whole event started.
        """
        last = self._streams.get(frame[0]) if compactdelta.is_compact(frame) else None
        if last is None:
            self._report(ServerError("delta_without_base",
                                     f"a compact delta {str(frame)[:80]} of no known stream"))
            return None
        msg = compactdelta.rebuild(last, frame)
        self._streams[frame[0]] = compactdelta.stream_start(msg)
        return msg
