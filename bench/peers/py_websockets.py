"""
Python `websockets` peer for the fan-out benchmark: the asyncio server of
websockets with a built-in publisher. stdin "rate R B" makes it generate R
events/s in batches of B (B events in one loop callback); each event goes to
every connection with websockets.asyncio.server.broadcast(). Prints "ready".
"""

import asyncio
import sys
import time

from websockets.asyncio.server import broadcast, serve

SEQ = 0


def event() -> str:
    global SEQ
    us = time.time_ns() // 1000
    tok = 1000 + SEQ % 16
    body = (f'{{"type":"event","channel":"odin.token.{tok}.trade","data":{{"t_us":{us},'
            f'"seq":{SEQ},"token":"{tok}","price":0.00001234,"amount":1234.5678,"side":"buy",'
            f'"user":"bc1qxy2kgdygjrsqtzq2n0yrf2493p83kkfjhx0wlh"}},"ts":{us // 1000}}}')
    SEQ += 1
    return body


async def handler(ws) -> None:
    async for _ in ws:  # the benchmark's clients send nothing we need
        pass


async def publisher(server, rate: float, batch: int) -> None:
    loop = asyncio.get_running_loop()
    t0, sent = loop.time(), 0
    while True:
        due = int((loop.time() - t0) * rate / batch) + 1  # first at t0
        if due - sent > rate / batch:  # more than 1 s behind: drop the backlog
            sent = due - 1
        if sent < due:
            for _ in range(batch):
                broadcast(server.connections, event())
            sent += 1
        wait = t0 + sent * batch / rate - loop.time()
        # sleep(0) when a batch is already due: the next one is its own turn.
        await asyncio.sleep(max(0.0, wait))


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
                rate, batch = float(parts[1]), int(parts[2])
                task = asyncio.create_task(publisher(server, rate, batch)) if rate > 0 else None


if __name__ == "__main__":
    asyncio.run(main())
