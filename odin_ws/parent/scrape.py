"""
The node's C{/metrics} text: this process's metrics merged with every alive
shard's, which the parent asks for over each shard's control channel
(C{GetMetrics}). Gathering costs the parent's one loop about 1 ms per shard
plus 3.7 ms to merge (measured, issue 16), so it is done at most once per
L{CACHE_SECONDS}: requests in between get the same text, requests during a
gathering wait for it. A shard that does not answer within
C{listen.metrics_timeout} is left out, and is not asked again until that
call completes (its answer, or its control channel closing, which fails
every call on it): AMP has no way to withdraw a question once sent, so this
is what keeps a stalled shard from collecting one unanswered call per scrape.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from odin_ws.common import metrics
from odin_ws.common.commands import GetMetrics
from odin_ws.common.settings import Settings
from odin_ws.parent import exposition

log = Logger()

#: Seconds a gathered text is served again (a Prometheus scrape interval is 15 s or more).
CACHE_SECONDS = 1.0


class ShardSilent(Exception):
    """A shard's earlier metrics call is still unanswered; it is not asked again yet."""


class MetricsScrape:
    """
    @param shards: returns the current shard handles (C{index}, C{alive},
        C{call(command)}).
    @param settings: C{listen.metrics_timeout}.
    """

    def __init__(self, reactor: Any, shards: Callable[[], list], settings: Settings):
        self._reactor = reactor
        self._shards = shards
        self._settings = settings
        self._text: bytes | None = None
        self._at = 0.0
        self._waiting: list[defer.Deferred] | None = None
        #: Shard index -> its GetMetrics call not yet answered.
        self._asked: dict[int, defer.Deferred] = {}

    def reconfigure(self, settings: Settings) -> None:
        """A reload: the timeout is read at each gathering."""
        self._settings = settings

    @property
    def unanswered(self) -> int:
        """Shard calls sent and not yet answered (at most one per shard)."""
        return len(self._asked)

    def text(self) -> defer.Deferred:
        """Fires with the node's exposition (bytes), gathered at most once per L{CACHE_SECONDS}."""
        if self._text is not None and self._reactor.seconds() - self._at < CACHE_SECONDS:
            return defer.succeed(self._text)
        d: defer.Deferred = defer.Deferred()
        if self._waiting is not None:
            self._waiting.append(d)
            return d
        self._waiting = [d]
        self._gather()
        return d

    def _gather(self) -> None:
        timeout = self._settings.listen.metrics_timeout
        handles = [h for h in self._shards() if h.alive]
        calls = [self._ask(h).addTimeout(timeout, self._reactor) for h in handles]

        def merge(results: list) -> bytes:
            texts = {}
            for handle, (ok, value) in zip(handles, results):
                if ok:
                    texts[handle.index] = value["text"]
                else:
                    log.info("metrics of shard {index} left out: {error}", index=handle.index,
                             error=value.getErrorMessage() or value.type.__name__)
            return exposition.merge(metrics.exposition(metrics.Process.PARENT), texts)

        done = defer.DeferredList(calls, consumeErrors=True).addCallback(merge)
        done.addBoth(self._gathered)

    def _ask(self, handle: Any) -> defer.Deferred:
        """
        A Deferred of C{handle}'s answer that may be cancelled (on timeout)
        without losing track of the call itself.
        """
        if handle.index in self._asked:
            return defer.fail(ShardSilent(f"shard {handle.index}: earlier call unanswered"))
        call = defer.maybeDeferred(handle.call, GetMetrics)
        answer: defer.Deferred = defer.Deferred()
        if call.called:
            call.chainDeferred(answer)
            return answer
        self._asked[handle.index] = call

        def completed(result: Any) -> None:
            if self._asked.get(handle.index) is call:
                del self._asked[handle.index]
            if answer.called:
                return  # timed out: the gathering went on without it
            if isinstance(result, Failure):
                answer.errback(result)
            else:
                answer.callback(result)

        call.addBoth(completed)
        return answer

    def _gathered(self, result: Any) -> None:
        waiting, self._waiting = self._waiting or [], None
        if isinstance(result, bytes):
            self._text, self._at = result, self._reactor.seconds()
        for d in waiting:
            if isinstance(result, Failure):
                d.errback(result)
            else:
                d.callback(result)
