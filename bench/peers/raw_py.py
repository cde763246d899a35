"""
CPython raw ceiling for the fan-out benchmark: the most one CPython process
delivers when all it does per client per tick is one socket.send() of
prebuilt bytes. No framework, no per-client objects beyond the socket: each
tick builds its B frames once (unmasked text frames), joins them into one
bytes object and sends that to every client ("turn": one frame per send,
"burst": ten). What the kernel does not take waits in a per-client buffer,
flushed on EPOLLOUT; nothing is dropped, a client with more than 4 MiB
waiting is closed instead (counted, written to stderr at exit).

stdlib only: socket + select.epoll, non-blocking. A minimal WebSocket
upgrade (the request head up to the blank line, Sec-WebSocket-Accept, 101);
client frames are parsed only to notice a close or a subscribe, otherwise
discarded. Same stdin protocol as the other peers: "rate R B [N]" makes R
events/s in batches of B on N tokens, each batch in one loop turn. Prints
"ready".

Clients that subscribe to tokens (the random-tokens cells) are kept in an
index token -> fds; a tick then sends each subscribed client its frames of
the tick in one socket.send() (one dict of lists per tick), nothing to the
others.
"""

import base64
import hashlib
import json
import resource
import select
import signal
import socket
import sys
import time

from events import Ticks, commands, event, next_token, rate_command, subscribed_tokens

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MAX_PENDING = 4 << 20
MAX_HEAD = 8192
IN, IN_OUT = select.EPOLLIN, select.EPOLLIN | select.EPOLLOUT


def frame(text: str) -> bytes:
    """An unmasked final text frame."""
    data = text.encode()
    n = len(data)
    if n < 126:
        return bytes((0x81, n)) + data
    if n < 1 << 16:
        return bytes((0x81, 126)) + n.to_bytes(2, "big") + data
    return bytes((0x81, 127)) + n.to_bytes(8, "big") + data


def upgrade_reply(head: bytes) -> bytes | None:
    """The 101 answer to an upgrade request head, None without a key."""
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"sec-websocket-key":
            accept = base64.b64encode(hashlib.sha1(value.strip() + GUID).digest())
            return (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                    b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n")
    return None


def close_frame_in(buf: bytearray, texts: list | None = None) -> bool:
    """
    Discard the complete client frames in buf; True if one of them was a
    close. The payloads of text frames are appended to C{texts} (unmasked).
    """
    while len(buf) >= 2:
        n, h = buf[1] & 0x7F, 2
        if n == 126:
            n, h = int.from_bytes(buf[2:4], "big"), 4
        elif n == 127:
            n, h = int.from_bytes(buf[2:10], "big"), 10
        masked = buf[1] & 0x80
        h += 4 if masked else 0
        if len(buf) < h + n:
            return False
        if buf[0] & 0x0F == 8:
            return True
        if texts is not None and buf[0] & 0x0F == 1:
            payload = bytes(buf[h:h + n])
            if masked:
                key = buf[h - 4:h]
                payload = bytes(b ^ key[i & 3] for i, b in enumerate(payload))
            texts.append(payload)
        del buf[:h + n]
    return False


class RawServer:
    """One epoll loop: listener, stdin, clients."""

    def __init__(self, port: int):
        self.ep = select.epoll()
        self.lsock = socket.socket()
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", port))
        self.lsock.listen(4096)
        self.lsock.setblocking(False)
        self.socks: dict[int, socket.socket] = {}    # every accepted connection
        self.inbuf: dict[int, bytearray] = {}        # request head, then client frames
        self.clients: dict[int, socket.socket] = {}  # upgraded: they get the events
        self.pending: dict[int, bytearray] = {}      # what the kernel has not taken yet
        self.by_token: dict[int, set[int]] = {}      # random-tokens cells: token -> fds
        self.tokens_of: dict[int, list[int]] = {}
        self.overflows = 0
        # Seconds from each tick's due time to its last send() (the "loops"
        # command prints their p50/p99 and starts over).
        self.loops: list[float] = []

    def publish(self, batch: int) -> None:
        if self.by_token:
            self.publish_filtered(batch)
            return
        buf = b"".join([frame(event()) for _ in range(batch)])
        self.send_each(buf, self.clients.items())

    def publish_filtered(self, batch: int) -> None:
        """Each subscribed client gets its frames of the tick in one send."""
        per: dict[int, list[bytes]] = {}
        by_token = self.by_token
        for _ in range(batch):
            fds = by_token.get(next_token(), ())
            f = frame(event())
            for fd in fds:
                if fd in per:
                    per[fd].append(f)
                else:
                    per[fd] = [f]
        clients, pending = self.clients, self.pending
        for fd, frames in per.items():
            sock = clients.get(fd)
            if sock is None:
                continue
            buf = frames[0] if len(frames) == 1 else b"".join(frames)
            if fd in pending:
                self.send_each(buf, ((fd, sock),))   # queues behind what waits
                continue
            try:
                n = sock.send(buf)
            except BlockingIOError:
                n = 0
            except OSError:
                self.close(fd)
                continue
            if n != len(buf):
                pending[fd] = bytearray(buf[n:])
                self.ep.modify(fd, IN_OUT)

    def send_each(self, buf: bytes, targets) -> None:
        size, pending, dead = len(buf), self.pending, []
        for fd, sock in targets:
            if fd in pending:
                p = pending[fd]
                p += buf
                if len(p) > MAX_PENDING:
                    self.overflows += 1
                    dead.append(fd)
                continue
            try:
                n = sock.send(buf)
            except BlockingIOError:
                n = 0
            except OSError:
                dead.append(fd)
                continue
            if n != size:
                pending[fd] = bytearray(buf[n:])
                self.ep.modify(fd, IN_OUT)
        for fd in dead:
            self.close(fd)

    def flush(self, fd: int) -> None:
        p = self.pending[fd]
        try:
            n = self.socks[fd].send(p)
        except BlockingIOError:
            return
        except OSError:
            self.close(fd)
            return
        del p[:n]
        if not p:
            del self.pending[fd]
            self.ep.modify(fd, IN)

    def accept(self) -> None:
        while True:
            try:
                sock, _ = self.lsock.accept()
            except BlockingIOError:
                return
            except ConnectionAbortedError:
                continue
            sock.setblocking(False)
            # One send per tick must leave at once (the client delays its ACKs).
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            fd = sock.fileno()
            self.socks[fd], self.inbuf[fd] = sock, bytearray()
            self.ep.register(fd, IN)

    def read(self, fd: int) -> None:
        sock = self.socks.get(fd)
        if sock is None:  # closed earlier in this turn
            return
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.close(fd)
            return
        buf = self.inbuf[fd]
        buf += data
        if fd not in self.clients:
            end = buf.find(b"\r\n\r\n")
            reply = upgrade_reply(bytes(buf[:end])) if end >= 0 else None
            if reply is None:
                if end >= 0 or len(buf) > MAX_HEAD:
                    self.close(fd)
                return
            del buf[:end + 4]
            self.clients[fd] = sock
            n = sock.send(reply)  # into an empty socket buffer: all of it, in practice
            if n != len(reply):
                self.pending[fd] = bytearray(reply[n:])
                self.ep.modify(fd, IN_OUT)
        texts: list = []
        if close_frame_in(buf, texts):
            self.close(fd)
            return
        for text in texts:
            for tok in subscribed_tokens(text) or ():
                self.by_token.setdefault(tok, set()).add(fd)
                self.tokens_of.setdefault(fd, []).append(tok)

    def close(self, fd: int) -> None:
        sock = self.socks.pop(fd, None)
        if sock is None:
            return
        for d in (self.clients, self.pending, self.inbuf):
            d.pop(fd, None)
        for tok in self.tokens_of.pop(fd, ()):
            self.by_token[tok].discard(fd)
        self.ep.unregister(fd)
        sock.close()

    def run(self) -> None:
        stdin, lfd = sys.stdin.fileno(), self.lsock.fileno()
        self.ep.register(stdin, IN)
        self.ep.register(lfd, IN)
        ticks, line = None, b""
        print("ready", flush=True)
        while True:
            for fd, ev in self.ep.poll(ticks.wait(time.monotonic()) if ticks else -1):
                if fd == lfd:
                    self.accept()
                elif fd == stdin:
                    chunk = sys.stdin.buffer.raw.read(4096)
                    if not chunk:
                        return
                    cmds, line = commands(line, chunk)
                    for parts in cmds:
                        if parts[0] == b"rate":
                            rate, batch = rate_command(parts)
                            ticks = Ticks(rate, batch, time.monotonic()) if rate > 0 else None
                        elif parts[0] == b"loops":
                            print(json.dumps(loop_quantiles(self.loops)), flush=True)
                            self.loops = []
                else:
                    if ev & select.EPOLLOUT and fd in self.pending:
                        self.flush(fd)
                    if ev & ~select.EPOLLOUT:
                        self.read(fd)
            if ticks and ticks.take(time.monotonic()):
                self.publish(ticks.batch)
                # Its own share, as odinws's: due -> handed to the last socket.
                self.loops.append(time.monotonic() - ticks.due_at())


def loop_quantiles(loops: list[float]) -> dict:
    """p50/p99 (ms) of the ticks' due-to-last-send times."""
    if not loops:
        return {"n": 0}
    s = sorted(loops)
    return {"n": len(s), "p50_ms": 1e3 * s[len(s) // 2],
            "p99_ms": 1e3 * s[min(len(s) - 1, int(0.99 * len(s)))]}


def main() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    server = RawServer(int(sys.argv[1]))
    try:
        server.run()
    finally:
        print(f"raw_py: {len(server.clients)} clients open, {server.overflows} closed "
              f"over {MAX_PENDING >> 20} MiB pending", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
