"""
The Python client's connection loop (odinws_client.client) against a fake
node: a C{websockets} server on loopback whose answers each test scripts
(close codes, HTTP refusals, acks), to check the reconnect contract's rules
end to end without timing: delays are read from the state changes, with the
jitter's random source fixed.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any

from twisted.trial.unittest import SynchronousTestCase
from websockets.asyncio.server import Request, Response, ServerConnection, serve
from websockets.datastructures import Headers

from odinws_client import Client, ConnectionState, State, StateChange, Stopped, SubscriptionFailed

Script = Callable[[ServerConnection], Awaitable[None]]


class FakeNode:
    """Serves connection i with C{scripts[i]}; records each upgrade's headers."""

    def __init__(self, scripts: list[Script], refusals: dict[int, Response] | None = None):
        self.scripts = scripts
        self.refusals = refusals or {}
        self.requests: list[Headers] = []
        self.received: list[list[dict[str, Any]]] = []

    def refuse(self, connection: ServerConnection, request: Request) -> Response | None:
        self.requests.append(request.headers)
        return self.refusals.get(len(self.requests) - 1)

    async def handle(self, ws: ServerConnection) -> None:
        index = len(self.requests) - 1
        self.received.append([])
        await self.scripts[index](ws)

    async def recv(self, ws: ServerConnection) -> dict[str, Any]:
        msg: dict[str, Any] = json.loads(await ws.recv())
        self.received[-1].append(msg)
        return msg


def refusal(status: int, **headers: str) -> Response:
    return Response(status, HTTPStatus(status).phrase, Headers(headers), b"")


class ClientCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.states: list[StateChange] = []

    def drive(self, node: FakeNode, scenario: Callable[[str], Awaitable[None]]) -> None:
        async def main() -> None:
            async with serve(node.handle, "127.0.0.1", 0, process_request=node.refuse) as server:
                port = server.sockets[0].getsockname()[1]
                await asyncio.wait_for(scenario(f"ws://127.0.0.1:{port}/ws"), 30)
        asyncio.run(main())

    def client(self, url: str, **kw: Any) -> Client:
        return Client(url, on_state=self.states.append, rand=lambda: 0.0, **kw)

    async def state(self, match: Callable[[StateChange], bool]) -> StateChange:
        """The first state change matching, once there is one (polled, bounded by drive)."""
        while True:
            for change in self.states:
                if match(change):
                    return change
            await asyncio.sleep(0.01)


def closed(change: StateChange) -> bool:
    return change.state is ConnectionState.DISCONNECTED


class CloseCodeTests(ClientCase):
    def test_final_code_stops_and_the_iterator_says_why(self):
        """A 1008 close: no retry (retry_in None), and the subscription's iterator raises Stopped."""
        async def policy(ws: ServerConnection) -> None:
            await node.recv(ws)
            await ws.close(1008, "rate limited")
        node = FakeNode([policy])

        async def scenario(url: str) -> None:
            async with self.client(url) as client:
                sub = client.subscribe("odin.token.A.trade")
                with self.assertRaises(Stopped) as raised:
                    await sub.__anext__()
                self.assertEqual(raised.exception.code, 1008)
                change = await self.state(closed)
                self.assertEqual((change.code, change.retry_in), (1008, None))
        self.drive(node, scenario)
        self.assertEqual(len(node.requests), 1)

    def test_4001_gets_a_new_token_for_the_next_connection(self):
        """After 4001 the token provider is called and the next upgrade carries the new token."""
        tokens = iter(["first", "second"])

        async def expire(ws: ServerConnection) -> None:
            await ws.close(4001, "token expired")

        async def serve_on(ws: ServerConnection) -> None:
            await ws.wait_closed()
        node = FakeNode([expire, serve_on])

        async def scenario(url: str) -> None:
            async with self.client(url, token_provider=lambda: next(tokens)):
                await self.state(lambda c: c.state is ConnectionState.CONNECTED
                                 and len(node.requests) == 2)
        self.drive(node, scenario)
        self.assertEqual([h["Authorization"] for h in node.requests],
                         ["Bearer first", "Bearer second"])
        self.assertEqual([c.code for c in self.states if closed(c)][0], 4001)

    def test_reconnect_resubscribes_from_the_positions_seen(self):
        """After a 4000 close the new subscribe carries the last position seen (since)."""
        async def first(ws: ServerConnection) -> None:
            msg = await node.recv(ws)
            await ws.send(json.dumps({"type": "subscribed", "channels": msg["channels"],
                                      "id": msg["id"], "recovered": True, "replayed": 0,
                                      "positions": ["t:0:e:4"]}))
            await ws.send(json.dumps({"type": "event", "channel": "odin.token.A.trade",
                                      "data": 1, "ts": 1, "pos": "t:0:e:5"}))
            await ws.close(4000, "server restarting")

        async def second(ws: ServerConnection) -> None:
            await node.recv(ws)
            await ws.wait_closed()
        node = FakeNode([first, second])

        async def scenario(url: str) -> None:
            async with self.client(url) as client:
                sub = client.subscribe("odin.token.A.trade")
                item = await sub.__anext__()
                self.assertEqual(getattr(item, "pos", None), "t:0:e:5")
                while len(node.received) < 2 or not node.received[1]:
                    await asyncio.sleep(0.01)
        self.drive(node, scenario)
        self.assertEqual([m["since"] for m in (node.received[0][0], node.received[1][0])],
                         [[], ["t:0:e:5"]])

    def test_idle_close_waits_for_a_subscription(self):
        """1000 with nothing subscribed is the idle close: no retry until subscribe()."""
        async def idle(ws: ServerConnection) -> None:
            await ws.close(1000, "idle")

        async def serve_on(ws: ServerConnection) -> None:
            await node.recv(ws)
            await ws.wait_closed()
        node = FakeNode([idle, serve_on])

        async def scenario(url: str) -> None:
            async with self.client(url) as client:
                change = await self.state(closed)
                self.assertEqual((change.code, change.retry_in), (1000, None))
                self.assertEqual(len(node.requests), 1)
                client.subscribe("odin.token.A.trade")
                while len(node.received) < 2 or not node.received[1]:
                    await asyncio.sleep(0.01)
        self.drive(node, scenario)


class RefusalTests(ClientCase):
    def test_retry_after_is_a_lower_bound(self):
        """A 503 with Retry-After: 2 delays the next attempt by at least 2 s (jitter on top)."""
        node = FakeNode([], {0: refusal(503, **{"Retry-After": "2"})})

        async def scenario(url: str) -> None:
            async with self.client(url):
                change = await self.state(closed)
                self.assertEqual((change.status, change.retry_in), (503, 2.0))
        self.drive(node, scenario)

    def test_401_without_a_token_provider_stops(self):
        """401 and no way to get another token: Stopped with the status, no retry."""
        node = FakeNode([], {0: refusal(401)})

        async def scenario(url: str) -> None:
            async with self.client(url, token="stale") as client:
                sub = client.subscribe("odin.token.A.trade")
                with self.assertRaises(Stopped) as raised:
                    await sub.__anext__()
                self.assertEqual(raised.exception.status, 401)
        self.drive(node, scenario)
        self.assertEqual(len(node.requests), 1)


class RequestTests(ClientCase):
    def test_ping_and_a_refused_subscription(self):
        """ping() is answered by the pong of its id; a refused subscribe fails wait_subscribed()."""
        async def node_side(ws: ServerConnection) -> None:
            while True:
                msg = await node.recv(ws)
                if msg["type"] == "ping":
                    await ws.send(json.dumps({"type": "pong", "id": msg["id"]}))
                else:
                    await ws.send(json.dumps({"type": "error", "code": "forbidden",
                                              "message": "not granted", "id": msg["id"]}))
        node = FakeNode([node_side])

        async def scenario(url: str) -> None:
            async with self.client(url) as client:
                await self.state(lambda c: c.state is ConnectionState.CONNECTED)
                self.assertGreaterEqual(await client.ping(), 0.0)
                sub = client.subscribe("odin.token.A.trade")
                with self.assertRaises(SubscriptionFailed) as raised:
                    await sub.wait_subscribed()
                self.assertEqual((raised.exception.error.code, sub.state),
                                 ("forbidden", State.FAILED))
        self.drive(node, scenario)


class PositionsRefreshTests(ClientCase):
    def test_current_positions_are_asked_for_periodically(self):
        """Every positions_refresh s the held patterns are subscribed again with since: []."""
        async def node_side(ws: ServerConnection) -> None:
            msg = await node.recv(ws)
            await ws.send(json.dumps({"type": "subscribed", "channels": msg["channels"],
                                      "id": msg["id"], "recovered": True, "replayed": 0,
                                      "positions": ["t:0:e:4"]}))
            await node.recv(ws)
            await ws.wait_closed()
        node = FakeNode([node_side])

        async def scenario(url: str) -> None:
            async with self.client(url, positions_refresh=0.05) as client:
                client.subscribe("odin.token.A.trade")
                while len(node.received) < 1 or len(node.received[0]) < 2:
                    await asyncio.sleep(0.01)
        self.drive(node, scenario)
        self.assertEqual([(m["channels"], m["since"]) for m in node.received[0]],
                         [(["odin.token.A.trade"], [])] * 2)
