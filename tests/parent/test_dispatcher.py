"""
Tests for L{odin_ws.parent.dispatcher}: routes, limits, placement and handoff,
driven with a MemoryReactorClock, StringTransports and fake shard handles.
"""

from __future__ import annotations

import json
import os

from twisted.internet import defer, error, protocol, reactor, task
from twisted.internet.address import IPv6Address
from twisted.python.failure import Failure
from twisted.trial import unittest

from odin_ws.common import config as configmod
from odin_ws.common.commands import GetMetrics, Handoff, HandoffRefused
from tests.helpers import (
    UPGRADE,
    Collector,
    DispatcherTestCase,
    FakeShard,
    RealSocketMixin,
    RefusingAdmission,
    Response,
    get,
    make_dispatcher,
    make_settings,
    sample,
)


class RouteTests(DispatcherTestCase):
    def test_health(self):
        """GET /health answers the health callable's status and JSON document."""
        r = self.response(self.request(get("/health?verbose=1"))[1])
        self.assertEqual(r.status, 200)
        self.assertEqual(r.headers["content-type"], "application/json")
        self.assertEqual(json.loads(r.body), {"status": "ok"})
        self.assertEqual(int(r.headers["content-length"]), len(r.body))

    def test_health_unavailable(self):
        """A 503 from the health callable is passed on."""
        d = self.make(health=lambda: (503, {"status": "draining"}))
        r = self.response(self.request(get("/health"), d)[1])
        self.assertEqual((r.status, json.loads(r.body)), (503, {"status": "draining"}))

    def test_head_request(self):
        """HEAD is answered like GET, with the Content-Length but no body."""
        r = self.response(self.request(get("/health", "HEAD"))[1])
        self.assertEqual(r.status, 200)
        self.assertEqual(r.body, b"")
        self.assertEqual(int(r.headers["content-length"]), len(b'{"status": "ok"}'))

    def test_not_upgrade(self):
        """GET on the WebSocket path without an upgrade is 426 with Upgrade: websocket."""
        r = self.response(self.request(get("/ws"))[1])
        self.assertEqual(r.status, 426)
        self.assertEqual(r.headers["upgrade"], "websocket")
        r = self.response(self.request(get("/ws", extra="Upgrade: websocket\r\n"))[1])
        self.assertEqual(r.status, 426, "Connection: upgrade is required too")
        r = self.response(self.request(get("/ws", "HEAD"))[1])
        self.assertEqual((r.status, r.body), (426, b""))

    def test_method_not_allowed(self):
        """Methods other than GET and HEAD are 405 with an Allow header."""
        r = self.response(self.request(get("/ws", "POST"))[1])
        self.assertEqual(r.status, 405)
        self.assertEqual(r.headers["allow"], "GET, HEAD")

    def test_not_found(self):
        """Unknown paths are 404, and / is 404 while the demo is off."""
        for path in ("/nope", "/", "/ws/extra", "/index.html"):
            r = self.response(self.request(get(path))[1])
            self.assertEqual(r.status, 404, path)
        self.assertEqual(self.shards[0].calls, [])

    def test_head_errors(self):
        """Malformed heads are 400, unsupported versions 505, each counted."""
        before = sample("odinws_rejected_connections_total", status="400", reason="bad_request")
        self.assertEqual(self.response(self.request(b"GET /\r\n\r\n")[1]).status, 400)
        self.assertEqual(self.response(self.request(b"GET / HTTP/2.0\r\n\r\n")[1]).status, 505)
        self.assertEqual(
            sample("odinws_rejected_connections_total", status="400", reason="bad_request"),
            before + 1)

    def test_oversized_head(self):
        """A head over listen.max_head_bytes is 431."""
        proto, transport = self.connect()
        proto.dataReceived(b"GET /ws HTTP/1.1\r\nHost: node\r\n")
        proto.dataReceived(b"X-Pad: " + b"a" * self.config["listen.max_head_bytes"] + b"\r\n")
        self.assertEqual(self.response(transport).status, 431)
        self.assertEqual(self.shards[0].calls, [])


class TimeoutTests(DispatcherTestCase):
    def test_head_timeout(self):
        """A client that sends nothing gets 408 after listen.head_timeout, then is closed."""
        proto, transport = self.connect()
        self.reactor.advance(self.config["listen.head_timeout"] - 0.01)
        self.assertEqual(transport.value(), b"")
        self.reactor.advance(0.01)
        self.assertEqual(self.response(transport).status, 408)

    def test_slow_client(self):
        """A client trickling its head without finishing it still gets 408 at the deadline."""
        proto, transport = self.connect()
        step = self.config["listen.head_timeout"] / 20
        for byte in UPGRADE[:20]:
            self.assertEqual(transport.value(), b"")
            proto.dataReceived(bytes([byte]))
            self.reactor.advance(step)
        self.assertEqual(self.response(transport).status, 408)
        proto.dataReceived(UPGRADE[20:])
        self.assertEqual(self.shards[0].calls, [])

    def test_timer_cancelled(self):
        """Once the head is complete no timer is left behind."""
        self.request(get("/health"))
        self.assertEqual(self.reactor.getDelayedCalls(), [])


class MetricsTests(DispatcherTestCase):
    """/metrics on the public port, with listen.public_metrics on."""

    def setUp(self):
        super().setUp()
        self.config = self.config.replace(listen__public_metrics=True)
        self.dispatcher = self.make()

    def test_merged(self):
        """/metrics merges the parent's metrics with every alive shard's, labelled shard."""
        self.shards[2].alive = False
        for shard in self.shards:
            shard.answer = lambda c, kw, i=shard.index: {"text": f"# TYPE x gauge\nx {i}\n".encode()}
        r = self.response(self.request(get("/metrics"))[1])
        self.assertEqual(r.status, 200)
        self.assertTrue(r.headers["content-type"].startswith("text/plain; version=0.0.4"))
        self.assertIn(b'x{shard="0"} 0\nx{shard="1"} 1\n', r.body)
        self.assertIn(b"odinws_build_info", r.body)
        self.assertEqual(self.shards[2].calls, [])
        self.assertIs(self.shards[0].calls[0][0], GetMetrics)

    def test_silent_shard_left_out(self):
        """A shard that does not answer within listen.metrics_timeout is left out."""
        self.shards[0].answer = lambda c, kw: {"text": b"# TYPE x gauge\nx 5\n"}
        self.shards[2].answer = lambda c, kw: (_ for _ in ()).throw(HandoffRefused())
        proto, transport = self.request(get("/metrics"))
        self.assertEqual(transport.value(), b"")
        self.reactor.advance(self.config["listen.metrics_timeout"])
        r = self.response(transport)
        self.assertIn(b'x{shard="0"} 5', r.body)
        self.assertNotIn(b'x{shard="1"}', r.body)
        self.assertNotIn(b'x{shard="2"}', r.body)

    def test_failing_shard_left_out(self):
        """A shard whose call fails is left out; the others are served."""
        self.shards = [FakeShard(0), FakeShard(1)]
        self.shards[0].answer = lambda c, kw: {"text": b"y 1\n"}
        self.shards[1].call = lambda command, **kw: defer.fail(error.ConnectionLost())
        r = self.response(self.request(get("/metrics"))[1])
        self.assertIn(b'y{shard="0"} 1', r.body)
        self.assertNotIn(b'y{shard="1"}', r.body)


class HandoffTests(DispatcherTestCase):
    def test_handoff(self):
        """
        An upgrade is handed to the least-loaded shard with every byte read
        (the head and what followed), the peer and tls=False; reading stops
        first, and on success the parent releases its copy and counts it.
        """
        self.shards[0].connections = 2
        dispatched = sample("odinws_dispatch_total", shard="1")
        observed = sample("odinws_handoff_seconds_count")
        states = []
        call = self.shards[1].call
        self.shards[1].call = lambda c, **kw: states.append(transport.producerState) or call(c, **kw)
        proto, transport = self.connect()
        proto.dataReceived(UPGRADE + b"\x81\x80early")
        self.assertEqual(states, ["paused"])
        command, kw, d = self.shards[1].calls[0]
        self.assertIs(command, Handoff)
        self.assertEqual(kw["head"], UPGRADE + b"\x81\x80early")
        self.assertEqual((kw["peer"], kw["tls"]), ("10.0.0.1:5555", False))
        self.assertNotEqual(kw["fd"], transport.fileno())
        self.assertEqual(self.shards[1].connections, 1)
        proto.dataReceived(b"more")
        self.assertEqual(self.released, [])
        d.callback({"connections": 1})
        self.assertEqual(self.released, [transport])
        self.assertEqual(transport.value(), b"", "the parent wrote nothing")
        self.assertFalse(transport.disconnecting, "release, not loseConnection, closes it")
        self.assertEqual(sample("odinws_dispatch_total", shard="1"), dispatched + 1)
        self.assertEqual(sample("odinws_handoff_seconds_count"), observed + 1)
        self.assertRaises(OSError, os.fstat, kw["fd"])

    def test_ipv6_peer(self):
        """An IPv6 peer is passed as [ip]:port."""
        proto, transport = self.connect(peer=IPv6Address("TCP", "::1", 4242))
        proto.dataReceived(UPGRADE)
        self.assertEqual(self.shards[0].calls[0][1]["peer"], "[::1]:4242")

    def test_spread(self):
        """30 quick upgrades, all placed before any answer, spread 10/10/10."""
        for _ in range(30):
            self.request(UPGRADE)
        self.assertEqual([len(s.calls) for s in self.shards], [10, 10, 10])
        self.answer_all()
        self.assertEqual([s.connections for s in self.shards], [10, 10, 10])
        self.assertEqual(len(self.released), 30)

    def test_spread_sequential(self):
        """Answered one by one, upgrades still spread evenly."""
        for shard in self.shards:
            shard.answer = lambda c, kw: {"connections": 0}
        for _ in range(30):
            self.request(UPGRADE)
        self.assertEqual([s.connections for s in self.shards], [10, 10, 10])

    def assertRefused503(self, transport, reason: str, before: float):
        r = self.response(transport)
        self.assertEqual(r.status, 503)
        self.assertEqual(r.headers["retry-after"], str(self.config["listen.retry_after"]))
        self.assertEqual(sample("odinws_rejected_connections_total", status="503", reason=reason),
                         before + 1)
        self.assertEqual(self.released, [])

    def test_refused(self):
        """HandoffRefused gives 503 + Retry-After, closes the client, undoes the count, leaks no fd."""
        before = sample("odinws_rejected_connections_total", status="503", reason="handoff_failed")
        proto, transport = self.request(UPGRADE)
        _, kw, d = self.shards[0].calls[0]
        d.errback(Failure(HandoffRefused("full")))
        self.assertRefused503(transport, "handoff_failed", before)
        self.assertEqual(self.shards[0].connections, 0)
        self.assertRaises(OSError, os.fstat, kw["fd"])

    def test_timeout(self):
        """
        A shard that does not answer within listen.handoff_timeout may still
        adopt the socket: the parent writes nothing and only drops its copy
        (more in tests/parent/test_handoff_liveness.py).
        """
        proto, transport = self.request(UPGRADE)
        self.reactor.advance(self.config["listen.handoff_timeout"])
        self.assertEqual((transport.value(), self.released), (b"", [transport]))
        self.shards[0].calls[0][2].callback({"connections": 1})
        self.assertEqual(self.released, [transport], "a late answer releases nothing more")

    def test_shard_gone(self):
        """A shard whose call fails at once (process gone) gives 503."""
        self.shards = [FakeShard(0)]
        self.shards[0].call = lambda command, **kw: defer.fail(error.ConnectionLost())
        before = sample("odinws_rejected_connections_total", status="503", reason="handoff_failed")
        self.assertRefused503(self.request(UPGRADE)[1], "handoff_failed", before)

    def test_no_shard(self):
        """With every shard full or dead, an upgrade gets 503 no_shard."""
        self.shards = [FakeShard(0, 100, capacity=100), FakeShard(1, alive=False)]
        before = sample("odinws_rejected_connections_total", status="503", reason="no_shard")
        self.assertRefused503(self.request(UPGRADE)[1], "no_shard", before)

    def test_node_full(self):
        """At limits.max_connections an upgrade gets 503 node_full."""
        self.config = self.config.replace(limits__max_connections=30)
        self.dispatcher = self.make()
        for shard in self.shards:
            shard.connections = 10
        before = sample("odinws_rejected_connections_total", status="503", reason="node_full")
        self.assertRefused503(self.request(UPGRADE)[1], "node_full", before)

    def test_stop_accepting(self):
        """After stop_accepting upgrades get 503 while /health and /metrics still answer."""
        self.dispatcher.admission.stop_accepting()
        self.assertFalse(self.dispatcher.accepting)
        before = sample("odinws_rejected_connections_total", status="503", reason="draining")
        self.assertRefused503(self.request(UPGRADE)[1], "draining", before)
        self.assertEqual(self.response(self.request(get("/health"))[1]).status, 200)

    def test_admission_refusal(self):
        """An admission refusing the client's IP answers its status (429 with Retry-After)."""
        seen = []
        d = self.make(admission=RefusingAdmission(seen, (429, "rate")))
        r = self.response(self.request(UPGRADE, d)[1])
        self.assertEqual((r.status, seen), (429, ["10.0.0.1"]))
        self.assertIn("retry-after", r.headers)
        self.assertEqual(self.shards[0].calls, [])

    def test_refused_at_accept(self):
        """
        An admission refusing the peer at accept answers its status with its
        phrase before reading a byte, and nothing reaches a shard.
        """
        class RefuseAtAccept(RefusingAdmission):
            def admit(self, peer, trusted):
                self.seen.append(peer)
                return self.verdict

        seen: list = []
        d = self.make(admission=RefuseAtAccept(seen, (429, "connection_rate")))
        r = self.response(self.request(UPGRADE, d)[1])
        self.assertEqual((r.status, seen), (429, ["10.0.0.1"]))
        self.assertEqual(r.body, b"too many requests\n")
        self.assertIn("retry-after", r.headers)
        self.assertEqual(self.shards[0].calls, [])




class ModeTests(DispatcherTestCase):
    def test_tls_handed_unread(self):
        """With TLS the connection is handed over at once, unread, with tls=True."""
        d = self.make(tls=True)
        proto, transport = self.connect(d)
        self.assertEqual(transport.producerState, "paused")
        _, kw, pending = self.shards[0].calls[0]
        self.assertEqual((kw["head"], kw["tls"]), (b"", True))
        self.assertEqual(self.reactor.getDelayedCalls()[0].getTime(),
                         self.config["listen.handoff_timeout"])
        pending.callback({"connections": 1})
        self.assertEqual(self.released, [transport])

    def test_tls_failure_closes_silently(self):
        """A failed TLS handoff closes the connection without a plaintext answer."""
        self.shards = [FakeShard(0, alive=False)]
        proto, transport = self.connect(self.make(tls=True))
        self.assertTrue(transport.disconnecting)
        self.assertEqual(transport.value(), b"")

    def test_admin(self):
        """The admin listener serves /health and /metrics only."""
        d = self.make(admin=True, tls=True)
        self.assertEqual(self.response(self.request(UPGRADE, d)[1]).status, 404)
        self.assertEqual(self.response(self.request(get("/health"), d)[1]).status, 200)
        self.assertEqual(self.shards[0].calls, [])


class StaticTests(DispatcherTestCase):
    def setUp(self):
        super().setUp()
        root = self.mktemp()
        os.makedirs(os.path.join(root, "site", "img"))
        self.files = {"index.html": b"<html>demo</html>", "app.js": b"go()", "site.css": b"a{}",
                      "img/logo.svg": b"<svg/>", "img/p.png": b"\x89PNG", "notes.txt": b"x",
                      ".hidden.js": b"secret"}
        for name, data in self.files.items():
            with open(os.path.join(root, "site", name), "wb") as f:
                f.write(data)
        with open(os.path.join(root, "outside.html"), "wb") as f:
            f.write(b"outside")
        os.symlink(os.path.join(root, "outside.html"), os.path.join(root, "site", "link.html"))
        self.config = self.config.replace(demo__enabled=True)
        self.site = self.make(static_dir=os.path.join(root, "site"))

    def fetch(self, path: str, dispatcher=None) -> Response:
        return self.response(self.request(get(path), dispatcher or self.site)[1])

    def test_files(self):
        """/ is index.html; each allowed type is served with its content type."""
        expected = {"/": ("index.html", "text/html"), "/app.js": ("app.js", "text/javascript"),
                    "/site.css": ("site.css", "text/css"),
                    "/img/logo.svg": ("img/logo.svg", "image/svg+xml"),
                    "/img/p.png": ("img/p.png", "image/png")}
        for path, (name, ctype) in expected.items():
            r = self.fetch(path)
            self.assertEqual((r.status, r.body), (200, self.files[name]), path)
            self.assertTrue(r.headers["content-type"].startswith(ctype), path)

    def test_refused_paths(self):
        """Traversal, hidden files, other types, directories and escaping symlinks are 404."""
        for path in ("/../outside.html", "/%2e%2e/outside.html", "/img/..%2f..%2foutside.html",
                     "/.hidden.js", "/notes.txt", "/img", "/img/", "/link.html",
                     "/a%00.html", "/img%5c..%5c..%5coutside.html", "/missing.js"):
            self.assertEqual(self.fetch(path).status, 404, path)

    def test_demo_disabled(self):
        """With demo.enabled off nothing is served even with a static directory."""
        self.config = self.config.replace(demo__enabled=False)
        d = self.make(static_dir=self.site.static_dir)
        self.assertEqual(self.fetch("/", d).status, 404)


class CloseTests(DispatcherTestCase):
    def test_close(self):
        """close() drops clients still sending their head and fires once all are gone."""
        proto, transport = self.connect()
        proto.dataReceived(b"GET / HT")
        d = self.dispatcher.close()
        self.assertNoResult(d)
        self.assertTrue(transport.disconnecting)
        proto.connectionLost(Failure(error.ConnectionDone()))
        self.successResultOf(d)
        self.assertEqual(self.dispatcher.pending, 0)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_close_idle(self):
        """close() with no open connection fires at once."""
        self.successResultOf(self.dispatcher.close())

    def test_lost_while_handing(self):
        """A client gone while its handoff is pending is not answered afterwards."""
        proto, transport = self.request(UPGRADE)
        proto.connectionLost(Failure(error.ConnectionLost()))
        self.shards[0].calls[0][2].errback(Failure(HandoffRefused()))
        self.assertEqual(transport.value(), b"")
        self.assertEqual(self.shards[0].connections, 0)


class RealSocketTests(RealSocketMixin, unittest.TestCase):
    """The dispatcher on a real listening socket, handing over through real AMP."""

    @defer.inlineCallbacks
    def test_real_handoff(self):
        """
        A real client's upgrade, with bytes after the head, reaches the shard
        side through fd passing; the shard sees every byte once, head first.
        """
        channel, shard_side = self.control_channel()
        handle = FakeShard(0)
        handle.call = channel.callRemote
        config = configmod.load(None, environ={})
        dispatcher = make_dispatcher(reactor, make_settings(config), lambda: [handle])
        port = reactor.listenTCP(0, dispatcher, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        client = Collector()
        yield protocol.ClientCreator(reactor, lambda: client).connectTCP(
            "127.0.0.1", port.getHost().port)
        client.transport.write(UPGRADE + b"after")
        yield client.until_endswith(UPGRADE + b"after")
        echo = shard_side.adopted[0]
        self.assertNoLinger(echo)
        self.assertEqual(echo.chunks, [UPGRADE + b"after"])
        self.assertEqual(handle.connections, 1)
        while dispatcher.pending:
            yield task.deferLater(reactor, 0.001, lambda: None)
        yield self.finish_session(client, echo)
        self.assertTrue(client.reason.check(error.ConnectionDone))
