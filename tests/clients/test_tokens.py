"""Token helpers (odinws_client.tokens): exp read without verifying, refresh timing, providers."""

from __future__ import annotations

import asyncio

import jwt
from twisted.trial.unittest import SynchronousTestCase

from odinws_client.tokens import TokenError, fetch_token, refresh_delay, token_expiry


class ExpiryTests(SynchronousTestCase):
    def test_exp_of_a_jwt(self):
        """The exp claim is read from any JWT, whatever its key (not verified)."""
        token = jwt.encode({"exp": 1764190300, "channels": ["x"]}, "k" * 32, algorithm="HS256")
        self.assertEqual(token_expiry(token), 1764190300.0)

    def test_not_a_jwt(self):
        """Strings that are not JWTs, or have no numeric exp, have no expiry."""
        no_exp = jwt.encode({"sub": "a"}, "k" * 32, algorithm="HS256")
        bool_exp = jwt.encode({"exp": True}, "k" * 32, algorithm="HS256")
        for token in (None, "", "abc", "a.b.c", "a.!!!.c", no_exp, bool_exp):
            self.assertIsNone(token_expiry(token), token)


class RefreshDelayTests(SynchronousTestCase):
    def test_margin_before_exp(self):
        """A long token is refreshed refresh_margin seconds before its exp."""
        self.assertEqual(refresh_delay(exp=1300, now=1000, margin=30), 270)

    def test_half_life_for_short_tokens(self):
        """A token living less than twice the margin is refreshed halfway; an expired one at once."""
        self.assertEqual(refresh_delay(exp=1004, now=1000, margin=30), 2)
        self.assertEqual(refresh_delay(exp=990, now=1000, margin=30), 0)


class FetchTests(SynchronousTestCase):
    def test_sync_and_async_providers(self):
        """A provider may be a plain or an async callable."""
        async def get() -> str:
            return "async-token"
        self.assertEqual(asyncio.run(fetch_token(lambda: "sync-token")), "sync-token")
        self.assertEqual(asyncio.run(fetch_token(get)), "async-token")

    def test_failures(self):
        """A provider that raises or gives no string raises TokenError (the client reports it)."""
        def boom() -> str:
            raise RuntimeError("down")
        for provider in (boom, lambda: "", lambda: None):
            with self.assertRaises(TokenError):
                asyncio.run(fetch_token(provider))
