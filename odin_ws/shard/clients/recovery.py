"""
Answering a subscribe's recovery (C{since}: the positions the client last
saw) and snapshot (C{snapshot: true}: the latest event of every matching
channel) from the shard's L{History} (docs/protocol.md, "Positions and
recovery").

The whole answer is made in the reactor turn that handles the subscribe:
the ack, then the replayed or snapshot events, then the subscription joins
the index, so the first live event this connection gets is the first one
delivered after the history it was answered from: no gap, no duplicate at
the boundary, whatever arrives meanwhile.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from odin_ws.common import metrics
from odin_ws.common.events import Event
from odin_ws.shard.clients import messages
from odin_ws.shard.delivery.frames import text_frame
from odin_ws.shard.history import positions
from odin_ws.shard.history.holes import is_hole
from odin_ws.shard.history.store import TOO_LARGE, History

_SNAPSHOT_TAIL = b',"snapshot":true}'


@dataclass
class Answer:
    """What to send for one subscribe: the ack's fields, then C{frames}."""

    recovered: bool | None = None
    reason: str | None = None
    replayed: int | None = None
    snapshot: int | None = None
    positions: list[str] | None = None
    #: C{(frame, channel, event_type)} in the order to send.
    frames: list[tuple[bytes, str, str]] = field(default_factory=list)
    #: The history events C{frames} carry (replayed ones; None: a snapshot's).
    events: list[Event] | None = None
    #: A recovery too large for the buffer, to stream from history after
    #: the ack (L{odin_ws.shard.delivery.outbox.Outbox.recover_from}): the
    #: subscribe's C{since}; C{frames} is empty then.
    stream: dict[tuple[str, int], tuple[str, int]] | None = None
    #: Holes (undecodable records) replayed among C{frames}: each a gap notice.
    holes: int = 0

    def ack(self, channels: list[str], id: messages.MessageId) -> bytes:
        return messages.subscribed(channels, id, recovered=self.recovered, reason=self.reason,
                                   replayed=self.replayed, snapshot=self.snapshot,
                                   positions=self.positions)


def tops(history: History) -> list[str]:
    """The current position of every partition the shard retains."""
    return sorted(positions.encode(topic, partition, log.epoch or "0", log.high)
                  for topic, partition, log in history.partitions())


def _websocket(payload: bytes, event: Event) -> bytes:
    return text_frame(payload)


def answer(history: History, msg: messages.Subscribe, topics: Mapping[str, str],
           max_snapshot_events: int, room: int,
           encode: Callable[[bytes, Event], bytes] = _websocket, overhead: int = 8,
           max_scan: int | None = None, streamable: bool = False,
           allow: Callable[[int], bool] | None = None, behind: bool = False,
           keep: Callable[[Event], bool] | None = None) -> Answer:
    """
    The answer to C{msg}'s C{since} and C{snapshot}.

    @param topics: the configured topics (positions of others are refused).
    @param room: bytes the connection's outbound buffer may hold.
    @param encode: the transport's message of an event's JSON (the event's
        envelope, or a snapshot's), called in sending order (default: a
        WebSocket text frame; the SSE stream gives its own).
    @param overhead: bytes C{encode} adds to an event at most (a WebSocket
        frame header: 8; an SSE message carries its id).
    @param max_scan: retained events the recovery may look at
        (C{limits.max_recovery_scan}); past it: C{recovered: false},
        C{too_large}. A replay that would not fit C{room} is streamed
        from history as the socket drains when C{streamable} (the
        connection can: L{Answer.stream}), else too large as well.
    @param behind: the connection is catching up from history (its
        outbox notes event frames instead of sending them): a replay is
        streamed whatever its size, or too large if it cannot be.
    @param allow: told the bytes the answer would send (replay or
        snapshot), says whether the connection may have them now (its
        replay egress, C{limits.replay_rate}); no: C{replay_rate_limited}.
    @param keep: the subscription's filter (docs/protocol.md, "Subscription
        options"): replayed and snapshot events it refuses are left out (a
        streamed replay is not filtered).
    @raise messages.ClientError: C{unknown_position}, C{snapshot_too_large}
        or C{replay_rate_limited}; nothing is subscribed then.
    """
    patterns = [(c.token, c.event_type) for c in msg.channels]
    out = Answer()
    replay = None
    sent = 0
    if msg.since is not None:
        for topic, _ in msg.since:
            if topic not in topics:
                raise messages.ClientError(
                    messages.UNKNOWN_POSITION,
                    f"position of a topic this server does not serve: {topic[:80]!r}", msg.id)
        out.positions = tops(history)
        events, reason = history.replay(msg.since, patterns, max_scan)
        if events is not None and keep is not None:
            events = [e for e in events if keep(e)]
        size = sum(len(e.envelope) + overhead for e in events) if events is not None else 0
        if size > room or (behind and events):
            if streamable:
                out.stream = msg.since
            else:
                events, reason, size = None, TOO_LARGE, 0
        out.recovered = events is not None
        out.reason = reason
        if events is not None:
            out.replayed = len(events)
            replay = events
            sent = size
    if msg.snapshot and not (out.recovered and msg.since):
        # A subscription recovered from positions has missed nothing: no
        # snapshot needed. since: [] (a first subscribe asking for the
        # current positions) recovers nothing, so it gets its snapshot.
        latest, more = history.latest(patterns, max_snapshot_events)
        if keep is not None:
            latest = [e for e in latest if keep(e)]
        size = sum(len(e.envelope) + 16 + overhead for e in latest)
        if more or size > room:
            raise messages.ClientError(
                messages.SNAPSHOT_TOO_LARGE,
                f"the snapshot would send more than {max_snapshot_events} events or "
                f"{room} bytes; subscribe to fewer channels or without snapshot", msg.id)
        out.snapshot = len(latest)
        sent = size
    if allow is not None and sent and not allow(sent):
        raise messages.ClientError(
            messages.REPLAY_RATE_LIMITED,
            f"this connection was sent as much replay and snapshot as it may for now "
            f"({sent} bytes more asked); try again later, or recover less at a time", msg.id)
    if msg.since is not None:
        metrics.RECOVERIES.labels(result="recovered" if out.recovered else out.reason).inc()
        if replay is not None:
            metrics.EVENTS_REPLAYED.inc(len(replay))
    if out.snapshot is not None:
        out.frames = [(encode(_snapshot_payload(e), e), e.channel, e.event_type)
                      for e in latest]
        metrics.SNAPSHOT_EVENTS.inc(len(latest))
    elif replay and out.stream is None:
        out.frames = [(encode(e.envelope, e), e.channel, e.event_type) for e in replay]
        out.events = replay
        out.holes = sum(1 for e in replay if is_hole(e))
    return out


def _snapshot_payload(event: Event) -> bytes:
    """
    What a snapshot sends of a channel's latest event: the event marked
    C{"snapshot":true}, or, when the latest record could not be decoded,
    its C{gap} message as it is (a copy: not the envelope itself, which an
    encoder takes for a replayed event).
    """
    if is_hole(event):
        return event.envelope[:-1] + b"}"
    return event.envelope[:-1] + _SNAPSHOT_TAIL
