"""The reconnect contract's rules (odinws_client.reconnect): backoff, close codes, statuses."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from odinws_client.reconnect import Action, after_close, after_refusal, backoff_delay, retry_after


class BackoffTests(SynchronousTestCase):
    def test_full_jitter_up_to_the_doubling_bound(self):
        """The delay is random() times min(cap, base * 2 ** attempt): 0 up to that bound."""
        top = [backoff_delay(n, rand=lambda: 1.0) for n in range(9)]
        self.assertEqual(top, [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0])
        self.assertEqual(backoff_delay(5, rand=lambda: 0.0), 0.0)
        self.assertEqual(backoff_delay(3, rand=lambda: 0.25), 1.0)

    def test_huge_attempts_stay_at_the_cap(self):
        """An attempt count in the thousands neither overflows nor passes the cap."""
        self.assertEqual(backoff_delay(5000, base=0.5, cap=30, rand=lambda: 1.0), 30.0)

    def test_default_jitter_spreads(self):
        """Without a given random source the delays of one attempt differ (jitter), within the bound."""
        delays = {backoff_delay(4) for _ in range(50)}
        self.assertGreater(len(delays), 40)
        self.assertTrue(all(0 <= d <= 8.0 for d in delays))


class CloseCodeTests(SynchronousTestCase):
    def test_reconnect_codes(self):
        """1001, 1006, 1011 (proxies), 4000 (restart), 4008 (slow) and unknown codes reconnect."""
        for code in (1001, 1005, 1006, 1011, 4000, 4008, 4999):
            self.assertIs(after_close(code, subscribed=True, can_get_token=False),
                          Action.RECONNECT, code)

    def test_final_codes_stop(self):
        """1002, 1003, 1007, 1008 and 1009 stop: retrying fails the same way."""
        for code in (1002, 1003, 1007, 1008, 1009):
            self.assertIs(after_close(code, subscribed=True, can_get_token=True), Action.STOP)

    def test_token_expired(self):
        """4001 asks for a new token; without a token provider the client stops."""
        self.assertIs(after_close(4001, True, can_get_token=True), Action.NEW_TOKEN)
        self.assertIs(after_close(4001, True, can_get_token=False), Action.STOP)

    def test_normal_close(self):
        """1000 with subscriptions held reconnects; with none it is the idle close."""
        self.assertIs(after_close(1000, subscribed=True, can_get_token=False), Action.RECONNECT)
        self.assertIs(after_close(1000, subscribed=False, can_get_token=False), Action.IDLE)


class RefusalTests(SynchronousTestCase):
    def test_statuses(self):
        """503, 5xx, 408 and 429 are retried; 401 gets a new token if it can; other 4xx stop."""
        for status in (500, 502, 503, 408, 429):
            self.assertIs(after_refusal(status, can_get_token=False), Action.RECONNECT, status)
        self.assertIs(after_refusal(401, can_get_token=True), Action.NEW_TOKEN)
        for status in (400, 401, 403, 404, 405, 426, 431):
            self.assertIs(after_refusal(status, can_get_token=False), Action.STOP, status)

    def test_retry_after(self):
        """Retry-After in seconds is a lower bound; absent, dates or nonsense count as none."""
        self.assertEqual([retry_after(v) for v in ("3", " 1.5 ", None, "soon",
                                                   "Wed, 21 Oct 2015 07:28:00 GMT", "-4")],
                         [3.0, 1.5, 0.0, 0.0, 0.0, 0.0])
