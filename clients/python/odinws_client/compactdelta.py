"""
Compact deltas (docs/protocol.md, "Compact deltas"): how the client makes
a ``[sid, dpos, dts, patch(, adds)]`` frame the whole event it stands for.
"""

from __future__ import annotations

from typing import Any

from odinws_client.mergepatch import apply_merge_patch


def is_compact(frame: Any) -> bool:
    """Whether a decoded message has the compact delta's shape."""
    return (isinstance(frame, list) and len(frame) in (4, 5)
            and all(type(x) is int for x in frame[:3])
            and isinstance(frame[3], dict) and (len(frame) == 4 or isinstance(frame[4], dict)))


def stream_start(msg: dict[str, Any]) -> dict[str, Any]:
    """What a whole event with a ``sid`` leaves to rebuild the stream's next delta from."""
    return {k: msg.get(k) for k in ("channel", "data", "ts", "pos")}


def rebuild(last: dict[str, Any], frame: list[Any]) -> dict[str, Any]:
    """
    The event ``frame`` stands for, from ``last`` (its stream's previous
    event): the data patched (``adds`` added to their members), ``ts`` and
    the offset of ``pos`` advanced. An event message as the server would
    have sent it whole, with its ``sid``.
    """
    sid, dpos, dts, patch = frame[:4]
    data = apply_merge_patch(last["data"], patch)
    if len(frame) == 5:
        for key, step in frame[4].items():
            data[key] = last["data"][key] + step
    stream, _, offset = last["pos"].rpartition(":")
    return {"type": "event", "channel": last["channel"], "data": data, "ts": last["ts"] + dts,
            "pos": f"{stream}:{int(offset) + dpos}", "sid": sid}
