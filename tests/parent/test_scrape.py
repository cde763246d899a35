"""
Tests for C{/metrics} (issue 16): served on the public port only with
C{listen.public_metrics} (always on the admin port), gathered at most once
per L{odin_ws.parent.scrape.CACHE_SECONDS} with concurrent requests sharing
one gathering, and a shard that timed out not asked again until its call
completes. Driven by a MemoryReactorClock and fake shard handles.
"""

from __future__ import annotations

from twisted.internet import error
from twisted.python.failure import Failure

from odin_ws.common.commands import GetMetrics
from odin_ws.parent.scrape import CACHE_SECONDS, MetricsScrape
from tests.helpers import DispatcherTestCase, get, make_settings


def text_of(index: int, value: int = 1) -> dict:
    return {"text": f"# TYPE x gauge\nx {value + index}\n".encode()}


class ScrapeTests(DispatcherTestCase):
    def setUp(self):
        super().setUp()
        self.config = self.config.replace(listen__public_metrics=True)
        self.dispatcher = self.make()

    def asked(self) -> list[int]:
        """GetMetrics calls per shard so far."""
        return [sum(1 for c in s.calls if c[0] is GetMetrics) for s in self.shards]

    def scrape(self, dispatcher=None):
        return self.request(get("/metrics"), dispatcher)[1]

    def answer(self, value: int = 1) -> None:
        for shard in self.shards:
            for command, _, d in shard.calls:
                if command is GetMetrics and not d.called:
                    d.callback(text_of(shard.index, value))

    def test_public_port_off_by_default(self):
        """
        With the default settings /metrics on the public port is 404 and
        asks no shard; the admin listener serves it.
        """
        self.config = self.config.replace(listen__public_metrics=False)
        public = self.make()
        self.assertEqual(self.response(self.scrape(public)).status, 404)
        self.assertEqual(self.asked(), [0, 0, 0])
        admin = self.make(admin=True)
        transport = self.scrape(admin)
        self.answer()
        self.assertEqual(self.response(transport).status, 200)

    def test_cached_for_a_second(self):
        """
        Requests within CACHE_SECONDS of a gathering get its text and ask no
        shard; the first one after it gathers again.
        """
        first = self.scrape()
        self.answer(1)
        self.assertIn(b'x{shard="2"} 3', self.response(first).body)
        self.reactor.advance(CACHE_SECONDS / 2)
        again = self.response(self.scrape())
        self.assertIn(b'x{shard="2"} 3', again.body)
        self.assertEqual(self.asked(), [1, 1, 1])
        self.reactor.advance(CACHE_SECONDS / 2)
        later = self.scrape()
        self.assertEqual(self.asked(), [2, 2, 2])
        self.answer(5)
        self.assertIn(b'x{shard="2"} 7', self.response(later).body)

    def test_concurrent_requests_share_one_gathering(self):
        """Requests arriving while a gathering runs wait for it: one call per shard for all."""
        waiting = [self.scrape() for _ in range(5)]
        self.assertEqual(self.asked(), [1, 1, 1])
        self.assertEqual([t.value() for t in waiting], [b""] * 5)
        self.answer()
        bodies = {self.response(t).body for t in waiting}
        self.assertEqual(len(bodies), 1)

    def test_listeners_share_the_cache(self):
        """The public and admin listeners given one MetricsScrape gather once for both."""
        scrape = MetricsScrape(self.reactor, lambda: self.shards, make_settings(self.config))
        public = self.make(scrape=scrape)
        admin = self.make(scrape=scrape, admin=True)
        one, two = self.scrape(public), self.scrape(admin)
        self.answer()
        self.assertEqual(self.response(one).body, self.response(two).body)
        self.assertEqual(self.asked(), [1, 1, 1])

    def test_silent_shard_not_asked_again(self):
        """
        A shard that does not answer within listen.metrics_timeout is left
        out, and later scrapes do not send it another call while the first
        is unanswered (they answer at once without it); once it answers,
        it is asked again.
        """
        timeout = self.config["listen.metrics_timeout"]
        self.shards[1].answer = self.shards[2].answer = lambda c, kw: {"text": b"y 1\n"}
        first = self.scrape()
        self.reactor.advance(timeout)
        self.assertNotIn(b'y{shard="0"}', self.response(first).body)
        self.assertEqual(self.dispatcher.scrape.unanswered, 1)
        for _ in range(3):
            self.reactor.advance(CACHE_SECONDS)
            r = self.response(self.scrape())
            self.assertIn(b'y{shard="1"}', r.body)
        self.assertEqual(self.asked(), [1, 4, 4])
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.shards[0].calls[0][2].callback({"text": b"y 1\n"})
        self.assertEqual(self.dispatcher.scrape.unanswered, 0)
        self.reactor.advance(CACHE_SECONDS)
        self.scrape()
        self.assertEqual(self.asked(), [2, 5, 5])

    def test_channel_closed_frees_the_shard(self):
        """A silent shard's call failing later (its control channel closed) lets it be asked again."""
        first = self.scrape()
        self.reactor.advance(self.config["listen.metrics_timeout"])
        self.response(first)
        self.shards[0].calls[0][2].errback(Failure(error.ConnectionLost()))
        self.assertEqual(self.dispatcher.scrape.unanswered, 2)
        self.reactor.advance(CACHE_SECONDS)
        self.scrape()
        self.assertEqual(self.asked()[0], 2)
