"""
The compact delta format (C{"delta": "compact"}; docs/protocol.md, "Compact
deltas"): a delta frame that carries no envelope.

Why: on the simulator's price and liquidity streams about 110 bytes of each
event are the envelope (C{type}, C{channel}, C{ts}, C{pos}); each event's
differ, so neither a merge patch of the data nor a context-free deflate of
the message removes them, and the prices themselves change every tick. A
merge-patch delta is therefore still ~87% of the whole event. The compact
frame says the same in a JSON array of four or five members,

    [sid, dpos, dts, patch]          [sid, dpos, dts, patch, adds]

against the previous event of the same channel that the connection
received (always the previous frame of the same stream: a connection gets
a delta only when that one went straight into its queue,
L{odin_ws.shard.delivery.variantfeed}):

  - C{sid}: the channel's stream id on this shard, announced in the whole
    event that starts the stream for the connection (C{"sid"} member);
  - C{dpos}: the event's Kafka offset minus the previous one's (same
    topic, partition and epoch, else the event goes whole), so the client
    rebuilds the exact C{pos} it needs for recovery;
  - C{dts}: the event's C{ts} minus the previous one's;
  - C{patch}: a JSON Merge Patch (RFC 7386) of the data, without the
    members of C{adds};
  - C{adds}: top-level integer members of the data that were integers
    before too, as the difference to add (C{seq} +1, a millisecond C{ts}
    +100): a counter or a clock costs a few digits instead of all of them.
    Only integers within +-2**53 (which every JSON reader, JavaScript's
    included, holds exactly).

Nothing in a compact frame depends on the connection, so it is built once
per event per (channel, variant), as the merge-patch delta is.
"""

from __future__ import annotations

import json
from typing import Any

from odin_ws.shard.delivery import mergepatch

#: Integers every JSON reader holds exactly (JavaScript's Number.MAX_SAFE_INTEGER + 1).
EXACT = 2 ** 53


def _dumps(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False).encode("ascii")


def diff(old: object, new: object) -> tuple[dict[str, Any], dict[str, int]] | None:
    """
    The C{(patch, adds)} that turn C{old} into C{new}: C{adds} the changed
    top-level integer members (integers in both, within L{EXACT}) as
    differences, C{patch} the merge patch of the rest; None when no merge
    patch can (L{mergepatch.diff}).
    """
    patch = mergepatch.diff(old, new)
    if patch is None:
        return None
    adds: dict[str, int] = {}
    before: dict[str, Any] = old  # type: ignore[assignment]  # a dict: diff said so
    for key, value in patch.items():
        if type(value) is int and -EXACT < value < EXACT:
            prior = before.get(key)
            if type(prior) is int and -EXACT < prior < EXACT:
                adds[key] = value - prior
    for key in adds:
        del patch[key]
    return patch, adds


def frame_payload(sid: int, dpos: int, dts: int, patch: dict[str, Any],
                  adds: dict[str, int]) -> bytes:
    """The compact delta message: C{[sid,dpos,dts,patch]}, C{adds} appended when not empty."""
    head = b"[%d,%d,%d," % (sid, dpos, dts)
    if adds:
        return head + _dumps(patch) + b"," + _dumps(adds) + b"]"
    return head + _dumps(patch) + b"]"


def whole_payload(envelope: bytes, sid: int) -> bytes:
    """A whole event's envelope with C{"sid":<sid>} added: it starts stream C{sid}."""
    return envelope[:-1] + b',"sid":%d}' % sid

