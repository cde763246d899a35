"""Base test cases and fixtures of the parent's dispatcher and of one shard, driven by fakes."""

from __future__ import annotations

import itertools
import json
import os
import time
from collections.abc import Callable
from typing import Any

import txaio
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial import unittest

from odin_ws.common import config as configmod
from odin_ws.common import handoff
from odin_ws.common.events import Event
from odin_ws.common.logs import AUDIT_NAMESPACE
from odin_ws.common.settings import Settings
from odin_ws.parent.admission import Admission
from odin_ws.parent.dispatcher import Dispatcher
from odin_ws.parent.scrape import MetricsScrape
from odin_ws.shard.service import Shard
from tests.helpers.fakes import StalledTransport
from tests.helpers.frames import OPEN, parse_frames, text

UPGRADE = (b"GET /ws?token=t1 HTTP/1.1\r\nHost: node\r\nUpgrade: WebSocket\r\n"
           b"Connection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
           b"Sec-WebSocket-Version: 13\r\n\r\n")


class FakeShard:
    """A shard handle: records calls; answers them at once when C{answer} is set."""

    def __init__(self, index: int, connections: int = 0, capacity: int = 100,
                 alive: bool = True, accepting: bool = True):
        self.index, self.connections, self.capacity = index, connections, capacity
        self.alive, self.accepting = alive, accepting
        self.crash_looping = False
        #: As ShardHandle.saturated: too many handoffs unanswered for another one.
        self.saturated = False
        self.calls: list[tuple[type, dict, defer.Deferred]] = []
        self.answer = None

    def call(self, command, **kw):
        d = defer.Deferred()
        self.calls.append((command, kw, d))
        if self.answer is not None:
            d.callback(self.answer(command, kw))
        return d

    def reserve(self):
        self.connections += 1

    def handoff_done(self):
        pass

    def handoff_failed(self):
        self.connections = max(0, self.connections - 1)

    def as_health(self):
        return {"index": self.index, "alive": self.alive, "connections": self.connections}

    def __repr__(self):
        return f"FakeShard({self.index}, {self.connections}/{self.capacity})"


class FdTransport(StringTransport):
    """A StringTransport with a real descriptor behind fileno(), as a socket has."""

    def __init__(self, test: unittest.TestCase, peer=None):
        super().__init__(peerAddress=peer or IPv4Address("TCP", "10.0.0.1", 5555))
        r, w = os.pipe()
        test.addCleanup(os.close, r)
        test.addCleanup(os.close, w)
        self._fd = r

    def fileno(self) -> int:
        return self._fd


def make_settings(config: configmod.Config | None = None, **changes) -> Settings:
    """
    Typed settings of C{config} (default: the built-in defaults) with
    C{changes} on top, named as L{configmod.Config.replace} takes them
    (C{limits__max_connections=150}).
    """
    config = config if config is not None else configmod.load(None, environ={})
    return Settings.from_config(config.replace(**changes) if changes else config)


def get(path: str, method: str = "GET", extra: str = "") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: node\r\n{extra}\r\n".encode()


def make_dispatcher(reactor: Any, settings: Settings, shards: Callable[[], list],
                    **kw: Any) -> Dispatcher:
    """
    A Dispatcher as tests need one: C{/health} answers 200, a door that
    admits everyone (L{Admission} without limits), its own C{/metrics}
    scrape; C{kw} replaces any of them.
    """
    kw.setdefault("health", lambda: (200, {"status": "ok"}))
    kw.setdefault("admission", Admission(reactor.seconds))
    kw.setdefault("scrape", MetricsScrape(reactor, shards, settings))
    return Dispatcher(reactor, settings, shards, **kw)


class DispatcherTestCase(unittest.TestCase):
    def setUp(self):
        self.reactor = MemoryReactorClock()
        self.config = configmod.load(None, environ={})
        self.shards = [FakeShard(0), FakeShard(1), FakeShard(2)]
        self.released: list = []
        self.patch(handoff, "release", self.released.append)
        self.dispatcher = self.make()

    def make(self, **kw) -> Dispatcher:
        return make_dispatcher(self.reactor, make_settings(self.config), lambda: self.shards, **kw)

    def connect(self, dispatcher=None, peer=None):
        dispatcher = dispatcher or self.dispatcher
        proto = dispatcher.buildProtocol(None)
        transport = FdTransport(self, peer)
        proto.makeConnection(transport)
        return proto, transport

    def request(self, data: bytes, dispatcher=None):
        proto, transport = self.connect(dispatcher)
        proto.dataReceived(data)
        return proto, transport

    def response(self, transport) -> Response:
        self.assertTrue(transport.disconnecting, "connection not closed")
        r = Response(transport.value())
        self.assertEqual(r.headers["connection"], "close")
        if r.body:
            self.assertEqual(int(r.headers["content-length"]), len(r.body))
        return r

    def answer_all(self, result=None):
        for shard in self.shards:
            for _, _, d in shard.calls:
                if not d.called:
                    d.callback(result or {"connections": 1})


class MemoryTransport(StringTransport):
    """
    A StringTransport that, like Twisted's socket transports, lets a protocol
    unregister a producer it never registered (Autobahn does when it drops a
    connection).
    """

    def unregisterProducer(self):
        self.producer = None


class ShardClient:
    """One client of the shard: a real ClientProtocol, frames made by hand."""

    def __init__(self, shard: Shard, ip: str, transport=None):
        self.peer = IPv4Address("TCP", ip, next(_ports))
        self.transport = transport or MemoryTransport(hostAddress=HOST, peerAddress=self.peer)
        self.proto = shard.factory.buildProtocol(self.peer)
        self.proto.makeConnection(self.transport)
        self.status: int | None = None
        self.lost = False
        self._read = 0

    def handshake(self, headers: tuple[str, ...] = ()) -> int:
        """Send the upgrade request; the HTTP status of the answer."""
        lines = ["GET /ws HTTP/1.1", "Host: node", "Upgrade: websocket",
                 "Connection: Upgrade", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
                 "Sec-WebSocket-Version: 13", *headers]
        self.send(("\r\n".join(lines) + "\r\n\r\n").encode())
        if isinstance(self.transport, StalledSocket):
            self.transport.drain()
        data = self.transport.value()
        head = data.partition(b"\r\n\r\n")[0]
        self.status = int(head.split(b" ", 2)[1])
        self._read = len(head) + 4
        return self.status

    def send(self, data: bytes) -> None:
        self.proto.dataReceived(data)
        self.settle()

    def settle(self) -> None:
        """Deliver connectionLost once the server closed, as a reactor would."""
        if self.transport.disconnecting and not self.lost:
            self.lost = True
            self.proto.connectionLost(Failure(ConnectionDone()))

    @property
    def open(self) -> bool:
        return self.proto.state == OPEN and not self.lost

    def frames(self) -> list[tuple[int, bytes]]:
        """(opcode, payload) of the server frames that came since the last call."""
        data = self.transport.value()
        new, self._read = data[self._read:], len(data)
        return parse_frames(new)

    def messages(self) -> list[dict]:
        """The JSON text messages that came since the last call (no other frames allowed)."""
        frames = self.frames()
        assert all(op == 1 for op, _ in frames), frames
        return [json.loads(p) for _, p in frames]


class ShardTestCase(unittest.TestCase):
    #: Config overrides (dotted keys) of the shard under test.
    settings: dict = {}

    def setUp(self):
        self.clock = MemoryReactorClock()
        # Autobahn's timers (handshake, ping, close) run on txaio's loop.
        self.patch(txaio.config, "loop", self.clock)
        config = configmod.load(None, environ={}).replace(**self.settings)
        self.config = config
        self.shard = Shard(self.clock, Settings.from_config(config), 0, control_fd=None)
        self.clients: list[ShardClient] = []
        self.offsets = itertools.count()
        self.audit: list[dict] = []

        def observe(event):
            if event.get("log_namespace") == AUDIT_NAMESPACE:
                self.audit.append(event)
        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)

    def reload_shard(self, **changes: object) -> None:
        """Reload the shard with the test's configuration and C{changes} (as Config.replace takes them)."""
        self.shard.reload(Settings.from_config(self.config.replace(**changes)))

    def connect(self, ip: str = "10.0.0.1", headers: tuple[str, ...] = (),
                transport=None, expect: int = 101) -> ShardClient:
        client = ShardClient(self.shard, ip, transport)
        self.clients.append(client)
        self.assertEqual(client.handshake(headers), expect)
        return client

    def subscribe(self, client: ShardClient, *channels: str, id: object = None) -> dict:
        msg: dict = {"type": "subscribe", "channels": list(channels)}
        if id is not None:
            msg["id"] = id
        client.send(text(msg))
        [reply] = client.messages()
        return reply

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        for client in self.clients:
            client.settle()

    def publish(self, token: str, event_type: str = "trade") -> bytes:
        """One event through the shard's delivery path; its envelope."""
        # Stamped now: older events are not delivered live (outbound.max_event_age).
        event = Event.build(token, event_type, b'{"p":1}', int(time.time() * 1000),
                            "odin.trades", 0, next(self.offsets))
        self.shard.delivery.deliver([event])
        return event.envelope

    def audited(self, words: str) -> bool:
        return any(words in e.get("log_format", "") + str(e.get("reason", ""))
                   for e in self.audit)




HOST = IPv4Address("TCP", "127.0.0.1", 3005)


class StalledSocket(StalledTransport):
    """
    A client that reads nothing until C{drain} (over
    Twisted's real write buffer and producer calls), with what Autobahn
    also asks of a transport.
    """

    def __init__(self, peer: IPv4Address):
        super().__init__()
        self.peer = peer
        self.aborted = False

    def getPeer(self):
        return self.peer

    def getHost(self):
        return HOST

    def abortConnection(self):
        self.aborted = True
        self.disconnecting = True

    def value(self) -> bytes:
        return bytes(self.wire)


_ports = itertools.count(40000)


class Response:
    def __init__(self, data: bytes):
        head, _, self.body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split()[1])
        self.headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
