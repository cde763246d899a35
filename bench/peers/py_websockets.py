"""
Python `websockets` peer for the fan-out benchmark: the asyncio server of
websockets with a built-in publisher. stdin "rate R B" makes it generate R
events/s in batches of B (B events in one loop callback); each event goes to
every connection with websockets.asyncio.server.broadcast(). Prints "ready".
Clients that subscribe to tokens (the random-tokens cells) are kept in an
index token -> connections and get only their tokens' events (broadcast()
to the token's set).
"""

import asyncio
import sys

from events import Ticks, event, next_token, rate_command, subscribed_tokens
from websockets.asyncio.server import broadcast, serve

BY_TOKEN: dict[int, set] = {}


async def handler(ws) -> None:
    mine: list[int] = []
    try:
        async for message in ws:
            for tok in subscribed_tokens(message) or ():
                BY_TOKEN.setdefault(tok, set()).add(ws)
                mine.append(tok)
    finally:
        for tok in mine:
            BY_TOKEN.get(tok, set()).discard(ws)


async def publisher(server, rate: float, batch: int) -> None:
    loop = asyncio.get_running_loop()
    ticks = Ticks(rate, batch, loop.time())
    while True:
        if ticks.take(loop.time()):
            for _ in range(batch):
                to = BY_TOKEN.get(next_token(), ()) if BY_TOKEN else server.connections
                broadcast(to, event())
        await asyncio.sleep(ticks.wait(loop.time()))


async def main() -> None:
    port = int(sys.argv[1])
    loop = asyncio.get_running_loop()
    async with serve(handler, "127.0.0.1", port, compression=None, ping_interval=None,
                     max_queue=None, backlog=4096) as server:
        task = None
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        print("ready", flush=True)
        while line := await reader.readline():
            parts = line.split()
            if parts and parts[0] == b"rate":
                if task:
                    task.cancel()
                rate, batch = rate_command(parts)
                task = asyncio.create_task(publisher(server, rate, batch)) if rate > 0 else None


if __name__ == "__main__":
    asyncio.run(main())
