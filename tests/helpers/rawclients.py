"""
Many WebSocket clients in one asyncio process, on raw sockets: a hand-made
upgrade (subscribe by URL) and a frame reader that tells events from gap
notices by their first bytes, or parses them (C{keep}). For loads a
C{websockets} client per connection cannot carry: the backlog case of issue
22 (C{tests/integration/test_backlog.py}, C{bench/backlog.py}).
"""

from __future__ import annotations

import asyncio
import json
import socket

#: Every event of every token (docs/protocol.md, "Subscribe by URL").
EVERYTHING = "/ws?channels=odin.token.*.*"


def upgrade(path: str = EVERYTHING) -> bytes:
    """A client's opening handshake for C{path} (the server's answer is not checked beyond 101)."""
    return (b"GET %s HTTP/1.1\r\nHost: n\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            % path.encode("ascii"))


class Tally:
    """
    Event frames and gap notices per connection. With C{keep}, each event's
    C{data.seq} is also kept per connection and partition (from its
    position), in the order received.
    """

    def __init__(self, n: int, keep: bool = False):
        self.counts = [0] * n
        self.gaps = [0] * n
        self.opened = 0
        self.keep = keep
        self.seqs: list[dict[int, list[int]]] = [{} for _ in range(n)] if keep else []

    def frames(self, i: int, buf: bytes) -> bytes:
        """Take the whole frames at the start of C{buf}; the rest of it."""
        p, n = 0, len(buf)
        while n - p >= 2:
            length, head = buf[p + 1] & 127, 2
            if length == 126:
                if n - p < 4:
                    break
                length, head = int.from_bytes(buf[p + 2:p + 4], "big"), 4
            elif length == 127:
                if n - p < 10:
                    break
                length, head = int.from_bytes(buf[p + 2:p + 10], "big"), 10
            if n - p < head + length:
                break
            payload = buf[p + head:p + head + length]
            if payload.startswith(b'{"type":"event"'):
                self.counts[i] += 1
                if self.keep:
                    msg = json.loads(payload)
                    partition = int(msg["pos"].split(":")[1])
                    self.seqs[i].setdefault(partition, []).append(msg["data"]["seq"])
            elif payload.startswith(b'{"type":"gap"'):
                self.gaps[i] += 1
            p += head + length
        return buf[p:]


async def open_client(i: int, port: int, tally: Tally, gate: asyncio.Semaphore,
                      rcvbuf: int = 32768, path: str = EVERYTHING
                      ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect and upgrade client C{i} (C{gate}: how many handshakes at once)."""
    async with gate:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        reader, writer = await asyncio.open_connection(sock=sock, limit=1 << 20)
        writer.write(upgrade(path))
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 101"):
            raise RuntimeError(f"connection {i}: {head[:60]!r}")
    tally.opened += 1
    return reader, writer


async def read_all(i: int, reader: asyncio.StreamReader, tally: Tally) -> None:
    """Read client C{i}'s frames as fast as they come, until the connection ends."""
    buf = b""
    while chunk := await reader.read(1 << 16):
        buf = tally.frames(i, buf + chunk)
