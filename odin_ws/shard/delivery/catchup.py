"""
Catch-up from history: what a connection that fell behind is owed, kept as
positions, not frames (docs/protocol.md, "Slow clients: catch-up and gaps").

Why: under the C{drop} and C{disconnect} policies an Outbox whose buffer is
full used to drop frames, and the client could not know (positions are not
contiguous, so a hole is invisible). Every event a shard delivers is in its
L{History} already, so a full Outbox stops taking copies instead: it notes,
per stream (partition), the position after which it sent nothing
(L{Behind.note}: once per stream, an O(1) dict test per later event), and
when its socket drains it reads what it missed from history in slices
(L{Behind.slice}, bounded in events looked at and in bytes), then goes
back to live delivery in the same reactor turn as its last slice, so the
switch has no gap and no duplicate: no live frame was queued for it while
it was behind, and history holds every event delivered before that turn.

A stream whose position history no longer holds (evicted: the client was
away longer than the history window; the topic was recreated; the log
restarted) cannot be caught up: the client gets one L{gap_notice} naming
the stream and the position from which it may try to recover, and the
stream continues live.
"""

from __future__ import annotations

from odin_ws.common.events import Event
from odin_ws.common.twisted_internals import HOLDING, held, producer_of, resume_when_drained, write_state
from odin_ws.shard.delivery.behind import Behind
from odin_ws.shard.delivery.gaps import STALE, count_told, gap_notice
from odin_ws.shard.delivery.outqueue import OutboxCore
from odin_ws.shard.history.holes import UNDECODABLE
from odin_ws.shard.history.store import TOO_OLD

#: Room and cap of an Outbox that is behind start here (as a closed one's
#: are lower still, odin_ws/shard/delivery/outqueue.py; cap - room is still
#: what waits in its queue): every push takes the slow path, which notes it.
_BEHIND_ROOM = -(1 << 61)


class CatchingUp(OutboxCore):
    """
    The behind path of an L{odin_ws.shard.delivery.outbox.Outbox}: falling
    behind (positions, not frames), catch-up in slices as the socket
    drains, live again (see the module), and recoveries streamed the same way.
    """

    __slots__ = ()

    def fall_behind(self, event: Event, disconnect: bool = False) -> None:
        """
        C{event} does not fit: take no more frames, note where each stream
        stopped, catch up from history once the socket drains. Under the
        disconnect policy (C{disconnect}) the grace starts too.
        """
        behind = self.behind = Behind(disconnect)
        behind.note(event)
        self._behind()
        if disconnect:
            clock = self.fanout.reactor
            self._over_since = clock.seconds()
            self._refused = 0
            self._grace_call = clock.callLater(self.grace, self._grace_over)

    def can_stream(self, patterns: set[tuple[str, str]]) -> bool:
        """
        Whether a recovery for C{patterns} may be streamed (L{recover_from}):
        catch-up is possible, and the connection holds no other pattern
        (catch-up reads for every pattern held; a held one outside
        C{patterns} would get its events again). It may be behind already.
        """
        backlog = self.backlog
        return (backlog is not None and not self.closed
                and set(backlog.patterns_of(self)) <= patterns)

    def recover_from(self, since: dict[tuple[str, int], tuple[str, int]]) -> None:
        """
        Stream a recovery too large for the buffer (or asked while behind):
        behind from C{since} (C{(topic, partition) -> (epoch, offset)}),
        caught up from history in slices as the socket drains (only after
        L{can_stream}). Already behind: C{since} replaces the positions of
        its streams (the client says what it holds of every pattern the
        connection has), the others' stay.
        """
        history = self.backlog.history  # type: ignore[union-attr]  # streamed only with one
        high = lambda key: history.high(*key)  # noqa: E731
        behind = self.behind
        if behind is not None:
            behind.replaying(since, high)
            self._catch_up_soon()
            return
        behind = self.behind = Behind()
        behind.replaying(since, high)
        self._behind()

    def _behind(self) -> None:
        queued = self.cap - self.room
        self.cap = _BEHIND_ROOM
        self.room = _BEHIND_ROOM - queued
        self.tracking = True
        stats = self.stats
        stats.fell_behind += 1
        stats.behind_now += 1
        # Catch-up starts in a later turn and waits for the drain itself:
        # nothing else may start it. Nothing may be queued (the frames before
        # went out directly, the kernel or Twisted holding what did not fit),
        # so no flush of ours follows; and Twisted resumes a streaming
        # producer only if it was paused.
        self._catch_up_soon()

    def _catch_up_soon(self) -> None:
        """One slice in a later reactor turn (one per turn: others get theirs)."""
        if self._catch_call is None and not self.closed:
            self._catch_call = self.fanout.reactor.callLater(0, self._catch_up)

    def _catch_up(self) -> None:
        """
        Queue one slice of what this connection missed (as much as its
        buffer has room for) and write it; live again once a slice reached
        the newest event of every stream.
        """
        self._catch_call = None
        behind = self.behind
        if behind is None or self.closed or self.paused:
            return
        t = self.transport
        if self._fd and write_state(t) == HOLDING and producer_of(t) is self:
            self.paused = True
            resume_when_drained(t)
            return
        backlog = self.backlog
        assert backlog is not None, "behind only with a backlog"
        # Runs kept for the C send loop (a delivery that raised before its
        # write) are noted first: read after them, history has their events,
        # and the live switch below would take them a second time.
        self.fanout.settle()
        if self.behind is not behind or self.closed:
            return
        queued = self.cap - self.room
        part = behind.slice(backlog, self, self.limit - held(t) - queued)
        stats = self.stats
        if part.gaps:
            if behind.disconnect:
                self._disconnect(lambda f: f())
                return
            if any(reason == TOO_OLD for reason in part.gaps):
                stats.fell_out += 1
            for reason, streams in part.gaps.items():
                stats.gaps[reason] = stats.gaps.get(reason, 0) + len(streams)
                self.push_control(gap_notice(reason, streams))
        queue = self.queue
        for frame, channel in part.frames:
            self.room -= len(frame)
            queue += (frame, channel)
        stats.caught_up += part.events
        if part.stale:
            stats.gaps[STALE] = stats.gaps.get(STALE, 0) + part.stale
        if part.holes:
            count_told(stats, UNDECODABLE, part.holes)
        if part.done:
            self._go_live()
        if queue:
            self.flush()
        elif self.behind is not None:
            self._catch_up_soon()

    def _go_live(self) -> None:
        self.behind = None
        self.stats.behind_now -= 1
        queued = self.cap - self.room
        self.cap = self.limit - held(self.transport)
        self.room = self.cap - queued
        self._calm()
