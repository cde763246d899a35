"""
The cells of bench/bandwidth.py that real WebSocket clients measure: Python
`websockets` clients (another library than the server's), each behind a
loopback TCP proxy that counts the bytes the server sent it, so "bytes on
the wire" is what crossed the socket: frames, headers, compression and all.

  - bytes: the simulator's price and liquidity streams to six clients at
    once, plain, deflate, merge-patch deltas, compact deltas, each delta
    format with deflate: bytes per delivered event; the delta clients
    rebuild every event and must end up with exactly the plain client's
    event (channel, data, ts and pos) for every position;
  - rate: max_rate 2 on a channel updated 50 times a second;
  - filter: two filters that pass 10% of a channel's events (one on a
    number, one on a numeric string), checked event by event.

The events are produced from this process (confluent-kafka) into the node's
broker; every cell waits for the consumer first (a trickle until every
client got an event), then counts from zero.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import Producer
from websockets.asyncio.client import connect

from odinws_client import compactdelta
from odinws_client.mergepatch import apply_merge_patch

CONTROL = frozenset(("subscribed", "unsubscribed", "pong", "error", "gap"))


class CountingProxy:
    """A loopback TCP proxy to the node that counts the bytes flowing to the client."""

    def __init__(self, port: int):
        self.target = port
        self.down = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_r, up_w = await asyncio.open_connection("127.0.0.1", self.target)

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, count: bool) -> None:
            try:
                while data := await src.read(65536):
                    if count:
                        self.down += len(data)
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pump(reader, up_w, False), pump(up_r, writer, True))

    def close(self) -> None:
        if self.server is not None:
            self.server.close()


class Client:
    """One subscriber: what it asked, what it got (data per position, in order), how many bytes."""

    def __init__(self, name: str, channels: list[str], compression: str | None = None,
                 **options: Any):
        self.name = name
        self.channels = channels
        self.compression = compression
        self.options = options
        self.events: list[tuple[float, str, Any]] = []  # (received, pos, data)
        #: pos -> (channel, data, ts) of every event, as rebuilt.
        self.whole: dict[str, tuple[Any, Any, Any]] = {}
        self.deltas = 0
        self._streams: dict[int, dict[str, Any]] = {}
        self.errors: list[dict] = []
        self.extensions = ""
        self._last: dict[str, Any] = {}
        self._task: asyncio.Task | None = None
        self.proxy: CountingProxy | None = None

    async def open(self, port: int) -> None:
        self.proxy = CountingProxy(port)
        via = await self.proxy.start()
        self.ws = await connect(f"ws://127.0.0.1:{via}/ws", compression=self.compression,
                                max_size=None, ping_interval=None, proxy=None)
        self.extensions = ", ".join(type(e).__name__ for e in self.ws.protocol.extensions)
        await self.ws.send(json.dumps({"type": "subscribe", "channels": self.channels,
                                       "id": 1, **self.options}))
        reply = json.loads(await self.ws.recv())
        if reply.get("type") != "subscribed":
            raise RuntimeError(f"{self.name}: subscribe refused: {reply}")
        self._task = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        try:
            await self._receive()
        except Exception as e:   # shown in the report: a client that cannot rebuild
            self.errors.append({"client": repr(e)})
            raise

    async def _receive(self) -> None:
        async for text in self.ws:
            msg = json.loads(text)
            if type(msg) is list:
                # A compact delta: the event rebuilt against its stream's previous one.
                self.deltas += 1
                msg = compactdelta.rebuild(self._streams[msg[0]], msg)
                self._streams[msg["sid"]] = compactdelta.stream_start(msg)
            elif msg.get("type") in CONTROL:
                if msg.get("type") == "error":
                    self.errors.append(msg)
                continue
            elif "sid" in msg:
                self._streams[msg["sid"]] = compactdelta.stream_start(msg)
            channel = msg.get("channel")
            if "delta" in msg:
                self.deltas += 1
                data = apply_merge_patch(self._last.get(channel), msg["delta"])
            else:
                data = msg.get("data")
            self._last[channel] = data
            pos = msg.get("pos", "")
            self.events.append((time.monotonic(), pos, data))
            self.whole[pos] = (channel, data, msg.get("ts"))

    def mark(self) -> tuple[int, int, int]:
        """Where a measured phase starts: (events, deltas, bytes)."""
        return len(self.events), self.deltas, self.proxy.down

    async def close(self) -> None:
        await self.ws.close()
        if self._task is not None:
            self._task.cancel()
        self.proxy.close()


async def _until(check: Callable[[], bool], timeout: float, what: str,
                 state: Callable[[], object] = lambda: "") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what} {state()}")
        await asyncio.sleep(0.05)


async def _quiet(clients: list[Client], seconds: float = 1.0, limit: float = 30.0) -> None:
    """Until no client got anything for C{seconds}."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        before = sum(len(c.events) for c in clients)
        await asyncio.sleep(seconds)
        if sum(len(c.events) for c in clients) == before:
            return


async def _warm(producer: Producer, clients: list[Client], record: Callable[[], tuple]) -> None:
    """A trickle (one record every 0.2 s) until every client got one: the consumer is there."""
    deadline = time.monotonic() + 90
    while not all(c.events for c in clients):
        if time.monotonic() > deadline:
            raise RuntimeError("no events reached the clients in 90 s")
        topic, key, value = record()
        producer.produce(topic, key=key, value=value)
        producer.poll(0)
        await asyncio.sleep(0.2)
    await _quiet(clients)


async def _paced(producer: Producer, records, rate: float) -> list[float]:
    """Produce C{records} (topic, key, value) at C{rate}/s; their produce times."""
    times = []
    t0 = time.monotonic()
    for i, rec in enumerate(records):
        delay = t0 + i / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        producer.produce(rec[0], key=rec[1], value=rec[2])
        producer.poll(0)
        times.append(time.monotonic())
    producer.flush(5)
    return times


async def bytes_cell(port: int, bootstrap: str, count: int, rate: float, tokens: int) -> dict:
    """Bytes per delivered event, plain / deflate / delta / deflate + delta, one feed."""
    from odinws_tools import simulate
    topics = {"price": "odin.prices", "liquidity": "odin.liquidity"}
    channels = ["odin.token.*.price", "odin.token.*.liquidity"]
    clients = [Client("plain", channels), Client("deflate", channels, "deflate"),
               Client("merge-patch", channels, delta="merge-patch"),
               Client("deflate+merge-patch", channels, "deflate", delta="merge-patch"),
               Client("compact", channels, delta="compact"),
               Client("deflate+compact", channels, "deflate", delta="compact")]
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 2})
    stream = simulate.events(tokens, seed=25, topics=topics)
    try:
        for c in clients:
            await c.open(port)
        await _warm(producer, clients, lambda: next(stream))
        marks = [c.mark() for c in clients]
        records = [next(stream) for _ in range(count)]
        await _paced(producer, records, rate)
        await _until(lambda: all(len(c.events) - m[0] >= count for c, m in zip(clients, marks)),
                     60, "every event at every client", lambda: {
                         c.name: (len(c.events) - m[0], c.errors) for c, m in zip(clients, marks)})
        await _quiet(clients, 0.5)
        out: dict[str, Any] = {"count": count, "rate": rate, "tokens": tokens, "clients": {}}
        plain = clients[0].whole
        for c, (n0, d0, b0) in zip(clients, marks):
            got = c.events[n0:]
            # Channel, data and ts of every position exact, and no position made up.
            wrong = sum(plain.get(pos) != c.whole.get(pos) for _, pos, _ in got)
            out["clients"][c.name] = {
                "events": len(got), "deltas": c.deltas - d0, "bytes": c.proxy.down - b0,
                "bytes_per_event": (c.proxy.down - b0) / len(got) if got else None,
                "extensions": c.extensions, "data_mismatches": wrong, "errors": c.errors}
        base = out["clients"]["plain"]["bytes_per_event"]
        for r in out["clients"].values():
            r["vs_plain"] = r["bytes_per_event"] / base if base and r["bytes_per_event"] else None
        return out
    finally:
        for c in clients:
            await c.close()


async def rate_cell(port: int, bootstrap: str, seconds: float, updates: float,
                    max_rate: float) -> dict:
    """max_rate on a channel updated C{updates} times a second, against a client without it."""
    channel = ["odin.token.RATE.price"]
    capped, control = Client("capped", channel, max_rate=max_rate), Client("control", channel)
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0})
    seq = iter(range(10**9))

    def record() -> tuple:
        return ("odin.prices", b"RATE", json.dumps({"seq": next(seq), "price": "1.25"}).encode())

    try:
        for c in (capped, control):
            await c.open(port)
        await _warm(producer, [capped, control], record)
        marks = [c.mark()[0] for c in (capped, control)]
        records = [record() for _ in range(int(seconds * updates))]
        last_seq = json.loads(records[-1][2])["seq"]
        times = await _paced(producer, records, updates)
        await _until(lambda: len(control.events) - marks[1] >= len(records), 30, "control")
        await asyncio.sleep(1.5)
        got = capped.events[marks[0]:]
        arrivals = [t for t, _, _ in got]
        gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
        last_at, _, last_data = got[-1] if got else (0.0, "", {})
        return {"seconds": times[-1] - times[0], "updates": len(records),
                "control_events": len(control.events) - marks[1],
                "events": len(got), "per_second": len(got) / (times[-1] - times[0]),
                "min_gap": min(gaps) if gaps else None,
                "last_is_latest": last_data.get("seq") == last_seq,
                "last_after_s": last_at - times[-1], "max_rate": max_rate,
                "errors": capped.errors}
    finally:
        for c in (capped, control):
            await c.close()


async def filter_cell(port: int, bootstrap: str, count: int, rate: float) -> dict:
    """Two filters passing 10% each: exactly the events they should, and nothing else."""
    channel = ["odin.token.FILT.trade"]
    clients = [Client("tier", channel, filter={"tier": 0}),
               Client("price", channel, filter={"price": {"gte": 9}}),
               Client("control", channel)]
    expected = {"tier": lambda d: d["tier"] == 0, "price": lambda d: d["tier"] == 9,
                "control": lambda d: True}
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 2})

    def record(n: int) -> tuple:
        # price: a numeric string "<tier>.<nn>", at least 9 exactly for tier 9
        data = {"seq": n, "tier": n % 10, "price": f"{n % 10}.{n % 100:02d}", "side": "buy"}
        return ("odin.trades", b"FILT", json.dumps(data).encode())

    try:
        for c in clients:
            await c.open(port)
        warm = iter(range(10**6))
        await _warm(producer, clients[2:], lambda: record(next(warm)))  # the consumer is there
        await _quiet(clients)
        marks = [c.mark()[0] for c in clients]
        records = [record(n) for n in range(10**6, 10**6 + count)]
        sent = [json.loads(r[2]) for r in records]
        await _paced(producer, records, rate)
        await _until(lambda: len(clients[2].events) - marks[2] >= count, 60, "control")
        await _quiet(clients, 0.5)
        out: dict[str, Any] = {"count": count}
        for c, m in zip(clients, marks):
            got = [d["seq"] for _, _, d in c.events[m:]]
            want = [d["seq"] for d in sent if expected[c.name](d)]
            out[c.name] = {"filter": c.options.get("filter"), "events": len(got),
                           "expected": len(want), "exact": got == want, "errors": c.errors}
        return out
    finally:
        for c in clients:
            await c.close()
