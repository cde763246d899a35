"""
Slow readers caught up from history, end to end (issue 22): the real
broker, a real C{twistd odinws} node, and C{websockets} clients of which one
stops reading (a small receive buffer, its reader paused: the kernel and
the node's outbound buffer fill) while events keep coming, then reads again.
"""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

from tests.helpers.node import Client, Node, metric_lines, node_metric, wait_for
from tests.helpers.topics import TopicNodeCase, stream


class PausedReader:
    """
    A C{websockets} client that reads only when asked: its receive buffer is
    4 KiB and its reader stops once 4 frames wait (C{max_queue}), so the
    server's writes back up while the test does not call L{read}.
    """

    def __init__(self, node: Node):
        url = node.url()
        parts = urlsplit(url)
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect((parts.hostname, parts.port))
        # No keepalive pings: a paused reader would not see the pongs in time.
        self.client = Client(url, sock=sock, max_queue=4, ping_interval=None)
        self.events: dict[int, list[int]] = {}
        self.gaps: list[dict] = []
        self.order: list[str] = []

    def read(self, until, timeout: float = 60.0) -> None:
        """Read (events, gap notices) until C{until()} holds."""
        def done():
            if until():
                return True
            try:
                msg = self.client.recv(0.5)
            except TimeoutError:
                return False
            self.take(msg)
            return until()
        wait_for(done, timeout, 0, "the paused reader to read")

    def take(self, msg: dict) -> None:
        if msg.get("type") == "event":
            partition = int(msg["pos"].split(":")[1])
            self.events.setdefault(partition, []).append(msg["data"]["seq"])
            self.order.append("event")
        elif msg.get("type") == "gap":
            self.gaps.append(msg)
            self.order.append("gap")

    def count(self) -> int:
        return sum(map(len, self.events.values()))


class CatchUpNodeCase(TopicNodeCase):
    prefix = "catch"
    shards = 1
    partitions = 2
    # No keepalive pings: a client that reads nothing answers none, and would
    # be dropped 40 s after it connected (30 s interval, 10 s timeout), which
    # a slow run of these tests reaches.
    settings = {"outbound.max_buffer_bytes": 16384, "kafka.max_record_bytes": 16384,
                "outbound.kernel_unsent_bytes": 4096, "outbound.policy": {"default": "drop"},
                "keepalive.ping_interval": 0}

    def start(self, **extra) -> tuple[Node, PausedReader, Client]:
        node = self.node(**{**self.settings, **extra})
        reader = PausedReader(node)
        self.addCleanup(reader.client.close)
        reader.client.subscribe("odin.token.*.*")
        keeper = self.connect(node)
        keeper.subscribe("odin.token.*.*")
        self.produce(4)          # every partition has a log before the stall
        reader.read(lambda: reader.count() == 4)
        keeper.collect(4)
        return node, reader, keeper

    def stall(self, node: Node, keeper: Client, count: int, pad: int = 300,
              rounds: int = 1) -> None:
        """
        C{count} events arrive (in C{rounds}, each taken by the keeper before
        the next) while the paused reader does not read.
        """
        for _ in range(rounds):
            self.produce(count // rounds, pad=pad)
            keeper.collect(self.seq, timeout=60)


class CatchUpTests(CatchUpNodeCase):
    def test_paused_reader_gets_every_event_once_in_order(self):
        """
        A client that stops reading while ~190 KB of events arrive (twelve
        times its outbound buffer), then reads again while more keep
        coming, gets every event of its subscription exactly once and in
        order per partition, with no gap notice; so does a client that
        kept up. Before catch-up it got a few of them and nothing said so.
        """
        node, reader, keeper = self.start()
        self.stall(node, keeper, 600)
        reader.read(lambda: reader.count() >= 100)
        self.produce(50, pad=300)      # live while it catches up
        reader.read(lambda: reader.count() >= self.seq)
        keeper.collect(self.seq)
        self.assertEqual(reader.gaps, [])
        self.assertEqual(reader.events, self.produced)
        got = {}
        for msg in keeper.events:
            got.setdefault(int(msg["pos"].split(":")[1]), []).append(msg["data"]["seq"])
        self.assertEqual(got, self.produced)

    def test_past_the_window_one_gap_per_stream_then_live(self):
        """
        With a history of 100 events per partition, a client that stopped
        reading while 600 arrived (in rounds of 40, which a client that
        keeps up takes whole) gets, when it reads again, exactly one
        gap notice per stream (too_old, with the position to recover from,
        older than what it missed), then every later event live, in order.
        """
        node, reader, keeper = self.start(**{"history.max_events_per_partition": 100})
        self.stall(node, keeper, 600, pad=100, rounds=15)
        reader.read(lambda: len({s for g in reader.gaps for s in g["streams"]}) == 2)
        before = self.seq
        self.produce(20)
        reader.read(lambda: all(seq in reader.events.get(p, []) for p, seqs
                                in self.produced.items() for seq in seqs if seq >= before))
        named = [s for g in reader.gaps for s in g["streams"]]
        self.assertEqual(sorted(named), sorted(set(named)))
        self.assertEqual(len(named), 2)
        for gap in reader.gaps:
            self.assertEqual(gap["reason"], "too_old")
            for name, position in gap["streams"].items():
                self.assertEqual(stream(position), name)
        for seqs in reader.events.values():
            self.assertEqual(seqs, sorted(seqs))
            self.assertEqual(len(seqs), len(set(seqs)))
        # Every event produced after the notices came (the read above waited for them).
        last_gap = len(reader.order) - 1 - reader.order[::-1].index("gap")
        self.assertGreaterEqual(reader.order[last_gap:].count("event"), 20)


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def stalled_socket(url: str) -> socket.socket:
    """A WebSocket subscribed by URL to every channel that then reads nothing more."""
    parts = urlsplit(url)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(10)
    sock.connect((parts.hostname, parts.port))
    sock.sendall(b"GET /ws?channels=odin.token.*.* HTTP/1.1\r\nHost: node\r\n"
                 b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                 b"Sec-WebSocket-Version: 13\r\n\r\n")
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)
        if not chunk:
            raise AssertionError("closed during the handshake")
        head += chunk
    if not head.startswith(b"HTTP/1.1 101"):
        raise AssertionError(head[:80])
    return sock


class MemoryTests(CatchUpNodeCase):
    settings = {"listen.max_heads_per_ip": 1000, "limits.connection_rate_per_ip": 100000.0,
                "limits.connection_burst_per_ip": 1000, "outbound.policy": {"default": "drop"},
                "keepalive.ping_interval": 0}

    def test_stalled_connections_hold_positions_not_frames(self):
        """
        500 connections that never read, under a steady stream (~5.6 MB of
        events, every one to each of them): all of them fall behind and the
        shard's resident memory stays within a generous bound (60 MiB over
        what it held once they were behind); frames queued for each of them
        would take 2.8 GB.
        """
        node = self.node(**self.settings)
        keeper = self.connect(node)
        keeper.subscribe("odin.token.*.*")
        stalled = []
        for _ in range(500):
            stalled.append(stalled_socket(node.url()))
        for sock in stalled:
            self.addCleanup(sock.close)
        [pid] = node.shard_pids()

        def behind() -> float:
            return node_metric(node, "odinws_connections_behind")
        # In two rounds: one delivery is written whole, even past
        # outbound.max_buffer_bytes (the rest waits in Twisted's buffer), so
        # with the 500 events joined into one delivery (a busy machine) no
        # connection fell behind until the next; the second round finds none
        # of the buffer left.
        for _ in range(2):
            self.produce(250, pad=1000)
            keeper.collect(self.seq, timeout=120)
        try:
            wait_for(lambda: behind() >= 500, 60, 0.5, "every stalled connection behind")
        except AssertionError as e:
            series = metric_lines(node, "odinws_connections", "odinws_events_dropped",
                                  "odinws_events_stale", "odinws_writes",
                                  "odinws_outbound_buffer_high", "odinws_gaps_notified")
            raise AssertionError(f"{e}: {series}") from None
        base = rss_kib(pid)
        for _ in range(10):
            self.produce(500, pad=1000)
            keeper.collect(self.seq, timeout=120)
        grown = rss_kib(pid) - base
        self.assertEqual(behind(), 500)
        self.assertLess(grown, 60 * 1024, f"the shard grew by {grown} KiB")
