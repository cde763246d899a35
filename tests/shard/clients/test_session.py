"""
Tests for L{odin_ws.shard.clients.session}: the client rules, driven with a
fake transport and a small host, no WebSocket and no SSE: what both
transports get from the one session.
"""

from __future__ import annotations

import json
import time
from typing import Any

import jwt
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from odin_ws.common import config as configmod
from odin_ws.common.settings import Settings
from odin_ws.shard.clients import auth, messages
from odin_ws.shard.clients.closecodes import CLOSE_POLICY, CLOSE_TOKEN_EXPIRED
from odin_ws.shard.clients.connections import Connections
from odin_ws.shard.clients.options import SubscriptionOptions
from odin_ws.shard.clients.refusal import Refused
from odin_ws.shard.clients.session import Session
from odin_ws.shard.delivery.behind import Backlog
from odin_ws.shard.delivery.fanout import Fanout
from odin_ws.shard.delivery.outbox import Outbox
from odin_ws.shard.delivery.subscriptions import SubscriptionIndex
from odin_ws.shard.delivery.variantfeed import VariantFeed
from odin_ws.shard.delivery.variants import VariantIndex
from odin_ws.shard.delivery.writestats import WriteStats
from odin_ws.shard.history.store import History

SECRET = "s3cret-for-tests-only-0123456789abcdef"


def token(channels: list[str], expires_in: float = 300) -> str:
    return jwt.encode({"exp": time.time() + expires_in, "channels": channels}, SECRET,
                      algorithm="HS256")


class Host:
    """The shard as a session sees it (L{ClientHost}), made of the real parts."""

    def __init__(self, **settings: Any):
        config = configmod.load(None, environ={}).replace(**settings)
        self.settings = Settings.from_config(config)
        self.verifier = auth.Verifier(self.settings.auth)
        self.reactor = Clock()
        self.history = History(max_events=100, max_age=0, max_bytes=1 << 20, max_channels=100,
                               clock=time.time)
        self.fanout = Fanout(self.reactor, WriteStats())
        self.subscriptions = SubscriptionIndex(self.settings.limits)
        variants = VariantIndex(self.subscriptions.budget)
        self.options = SubscriptionOptions(self.settings.limits, variants,
                                           VariantFeed(self.reactor, variants, self.fanout))
        self.backlog = Backlog(self.history, self.subscriptions.patterns_of, self.settings)
        self.connections = Connections(self.reactor, self.settings)
        self.changes = 0
        self.recoveries: list[Outbox] = []

    def policy_for(self, event_type: str) -> str:
        return "drop"

    def subscriptions_changed(self) -> None:
        self.changes += 1

    def recovering(self, outbox: Outbox) -> None:
        self.recoveries.append(outbox)

    def admit_ip(self, ip: str) -> bool:
        return self.connections.admit_ip(ip)

    def release_ip(self, ip: str) -> None:
        self.connections.release_ip(ip)


class FakeTransport:
    """A connection: records what the session sends and how it closes."""

    def __init__(self) -> None:
        self.transport = StringTransport()
        self.outbox: Outbox | None = None
        self.replies: list[dict[str, Any]] = []
        self.closes: list[tuple[int, str]] = []

    def reply(self, payload: bytes) -> None:
        self.replies.append(json.loads(payload))

    def close(self, code: int, reason: str) -> None:
        self.closes.append((code, reason))


class SessionCase(SynchronousTestCase):
    settings: dict[str, Any] = {}

    def setUp(self) -> None:
        self.host = Host(**self.settings)
        self.conn = FakeTransport()
        self.session = Session(self.host, self.conn, "connection")

    def opened(self, headers: dict[str, str] | None = None,
               query: dict[str, Any] | None = None) -> Session:
        self.session.identify("10.0.0.1", headers or {})
        self.session.admit(headers or {}, query or {}, self.host.verifier.sources)
        self.session.open(0.0, lambda: None)
        return self.session


class AdmitTests(SessionCase):
    settings = {"limits__max_connections_per_ip": 1,
                "limits__allowed_origins": ["https://good.example"],
                "limits__trusted_proxies": ["10.0.0.1"]}

    def test_origin_then_per_ip(self):
        """
        A foreign origin is refused (403, nothing counted); the address's
        share is counted at admission and refused past it (429).
        """
        s = self.session
        s.identify("10.0.0.1", {"x-forwarded-for": "1.2.3.4"})
        self.assertEqual(s.client_ip, "1.2.3.4")
        e = self.assertRaises(Refused, s.admit, {"origin": "https://evil.example"}, {}, ())
        self.assertEqual((e.status, e.reason, e.code), (403, "origin", "origin_not_allowed"))
        self.assertEqual(self.host.connections.per_ip, {})
        s.admit({"origin": "https://good.example"}, {}, ())
        self.assertEqual(self.host.connections.per_ip, {"1.2.3.4": 1})
        other = Session(self.host, FakeTransport(), "stream")
        other.identify("10.0.0.1", {"x-forwarded-for": "1.2.3.4"})
        e = self.assertRaises(Refused, other.admit, {"origin": "https://good.example"}, {}, ())
        self.assertEqual((e.status, e.reason), (429, "per_ip"))

    def test_lost_releases_the_address_once(self):
        """A counted address is released when the connection is lost, and only once."""
        self.session.identify("10.0.0.9", {})
        self.session.admit({"origin": "https://good.example"}, {}, ())
        self.session.lost()
        self.session.lost()
        self.assertEqual(self.host.connections.per_ip, {})


class AuthTests(SessionCase):
    settings = {"auth__mode": "jwt", "auth__secret": SECRET, "auth__leeway": 0}

    def test_missing_token_refused_401(self):
        """Without a token the request is refused 401 with the verifier's reason."""
        self.session.identify("10.0.0.1", {})
        e = self.assertRaises(Refused, self.session.admit, {}, {}, ("query",))
        self.assertEqual((e.status, e.reason, e.code), (401, "auth_missing", "unauthorized"))

    def test_url_subscribe_outside_the_grant_refused_403(self):
        """A URL subscribe naming a channel the token does not grant is refused 403 forbidden."""
        self.session.identify("10.0.0.1", {})
        self.session.admit({}, {"token": token(["odin.token.*.trade"])}, ("query",))
        e = self.assertRaises(Refused, self.session.url_subscribe,
                              {"channels": "odin.token.A.trade,odin.token.A.price"})
        self.assertEqual((e.status, e.code), (403, messages.FORBIDDEN))
        self.assertEqual(json.loads(e.body())["code"], messages.FORBIDDEN)

    def test_expiry_closes_4001(self):
        """The open connection is closed 4001 when its token expires."""
        self.opened(query={"token": token(["odin.token.*.*"], expires_in=5)})
        self.host.reactor.advance(4)
        self.assertEqual(self.conn.closes, [])
        self.host.reactor.advance(2)
        self.assertEqual([c for c, _ in self.conn.closes], [CLOSE_TOKEN_EXPIRED])

    def test_refresh_drops_what_the_new_grant_does_not_allow(self):
        """A refresh to a narrower token drops and reports the subscriptions it no longer allows."""
        self.opened(query={"token": token(["odin.token.*.*"])})
        self.session.message(b'{"type":"subscribe","channels":'
                             b'["odin.token.A.trade","odin.token.A.price"]}')
        narrower = token(["odin.token.*.trade"])
        self.session.message(json.dumps({"type": "refresh", "token": narrower, "id": 7}).encode())
        reply = self.conn.replies[-1]
        self.assertEqual((reply["type"], reply["unsubscribed"], reply["id"]),
                         ("refreshed", ["odin.token.A.price"], 7))
        self.assertEqual(self.host.subscriptions.patterns_of(self.conn.outbox),
                         {("A", "trade")})


class MessageTests(SessionCase):
    settings = {"limits__max_subscriptions": 2, "limits__message_rate": 1,
                "limits__message_burst": 2, "limits__rate_strikes": 2,
                "keepalive__idle_timeout": 30}

    def test_subscribe_unsubscribe_ping(self):
        """Subscribe, unsubscribe and ping are answered in order; the index follows."""
        self.opened()
        s = self.session
        s.message(b'{"type":"subscribe","channels":["odin.token.A.trade"],"id":1}')
        s.message(b'{"type":"unsubscribe","channels":["odin.token.A.trade"],"id":2}')
        self.assertEqual([r["type"] for r in self.conn.replies], ["subscribed", "unsubscribed"])
        self.assertEqual(self.host.subscriptions.count(self.conn.outbox), 0)

    def test_subscription_limit(self):
        """A subscribe past limits.max_subscriptions is refused whole."""
        self.opened()
        self.session.message(b'{"type":"subscribe","channels":["odin.token.A.trade",'
                             b'"odin.token.B.trade","odin.token.C.trade"]}')
        self.assertEqual(self.conn.replies[-1]["code"], messages.TOO_MANY_SUBSCRIPTIONS)
        self.assertEqual(self.host.subscriptions.count(self.conn.outbox), 0)

    def test_rate_strikes_then_policy_close(self):
        """Past the burst messages are refused with rate_limited, then the connection gets 1008."""
        self.opened()
        allowed = [self.session.message_allowed() for _ in range(5)]
        self.assertEqual(allowed[:2], [True, True])
        self.assertNotIn(True, allowed[2:])
        self.assertIn(messages.RATE_LIMITED, [r.get("code") for r in self.conn.replies])
        self.assertEqual(self.conn.closes[-1][0], CLOSE_POLICY)

    def test_idle_close_only_without_a_subscription(self):
        """A connection that never subscribes is closed 1000 at the idle timeout; one that did is not."""
        self.opened()
        other = FakeTransport()
        busy = Session(self.host, other, "connection")
        busy.open(0.0, lambda: None)
        busy.message(b'{"type":"subscribe","channels":["odin.token.A.trade"]}')
        self.host.reactor.advance(31)
        self.assertEqual([c for c, _ in self.conn.closes], [1000])
        self.assertEqual(other.closes, [])


class StreamSessionTests(SessionCase):
    def test_listening_client_has_no_rate_nor_idle_timer(self):
        """A stream's session (talks=False) keeps no message bucket and no idle timer."""
        self.session.identify("10.0.0.1", {})
        self.session.admit({}, {}, ())
        self.session.open(0.0, lambda: None, talks=False)
        self.assertIsNone(self.session.bucket)
        self.assertEqual(self.host.reactor.getDelayedCalls(), [])
