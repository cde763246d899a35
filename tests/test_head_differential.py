"""
The parent and a shard must read a client's request head the same way
(issue 16). The same bytes go to the parent's path (the Dispatcher's
protocol, with a fake shard handle that takes handoffs) and to a shard's
path (a real ClientProtocol: the head gate, then Autobahn, as after a
handoff or inside TLS), and the two must give the same verdict: both hand
over / open the WebSocket, or both refuse with the same status. When both
accept, the parent must hand over the bytes unchanged and Autobahn must
see the headers the parent saw. A corpus of the inputs on which the two
parsers used to disagree, then a fuzzer mutating a valid upgrade with the
bytes that split, strip or end lines for one reader or the other.
"""

from __future__ import annotations

import itertools
import os
from typing import Any

from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport

from odin_ws.common import handoff
from odin_ws.common.httphead import RequestHead, parse
from odin_ws.shard.clients.websocket import ClientProtocol
from tests.helpers import (
    FakeShard,
    ShardClient,
    ShardTestCase,
    client_frame,
    make_dispatcher,
    make_settings,
)

KEY = b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=="
LINES = (b"GET /ws HTTP/1.1", b"Host: node", b"Upgrade: websocket", b"Connection: Upgrade",
         KEY, b"Sec-WebSocket-Version: 13")
LIMIT = 8192   # listen.max_head_bytes by default; setUp checks it


def head(*extra: bytes, lines: tuple[bytes, ...] = LINES, eol: bytes = b"\r\n") -> bytes:
    """An upgrade request with C{extra} header lines, lines ended by C{eol}."""
    return eol.join([*lines, *extra]) + eol + eol


def at_limit() -> bytes:
    data = head(b"X-Pad: ")
    return data.replace(b"X-Pad: ", b"X-Pad: " + b"a" * (LIMIT - len(data)))


#: (what, bytes, the verdict both sides must give: "accept" or a status).
CORPUS = [
    ("valid upgrade", head(), "accept"),
    ("valid, with X-Forwarded-For, Origin and a subprotocol",
     head(b"X-Forwarded-For: 1.2.3.4", b"Origin: https://e.com", b"Sec-WebSocket-Protocol: odinws"),
     "accept"),
    ("valid, a head of exactly the limit", at_limit(), "accept"),
    ("pipelined frame after the head", head() + client_frame(1, b'{"type":"ping","id":1}'),
     "accept"),
    ("pipelined bytes past the limit", head() + b"\x00" * LIMIT, 431),
    ("bare LF line endings", head(eol=b"\n"), 400),
    ("bare LF after one header", head().replace(b"Host: node\r\n", b"Host: node\n"), 400),
    ("end of head CRLF LF, headers after it",
     head()[:-2] + b"\nOrigin: https://evil.example\r\n\r\n", 400),
    ("end of head CRLF LF, then 64 KiB", head()[:-2] + b"\n" + b"A" * 65536, 400),
    ("CR alone as a line end", head().replace(b"Host: node\r\n", b"Host: node\r"), 400),
    ("CR alone in a value", head(b"X-A: a\rOrigin: x"), 400),
    ("0x85 in X-Forwarded-For", head(b"X-Forwarded-For: 1.2.3.4\x85Origin: https://evil.example"),
     400),
    ("0x85 in Sec-WebSocket-Protocol", head(b"Sec-WebSocket-Protocol: chat\x85Authorization: x"),
     400),
    ("0xa0 at the end of Origin", head(b"Origin: https://e.com\xa0"), 400),
    ("UTF-8 in a value", head(b"X-Name: caf\xc3\xa9"), 400),
    ("U+2028 as UTF-8 in a value", head(b"X-A: a\xe2\x80\xa8Origin: x"), 400),
    ("latin-1 letter in a name", head(b"X-N\xe4me: 1"), 400),
    ("0x85 in a name", head(b"X\x85Origin: 1"), 400),
    ("0x85 in the request target", head(lines=(b"GET /ws\x85 HTTP/1.1", *LINES[1:])), 400),
    ("vertical tab in a value", head(b"X-A: a\x0bOrigin: x"), 400),
    ("form feed in a value", head(b"X-A: a\x0cOrigin: x"), 400),
    ("0x1c in a value", head(b"X-A: a\x1cOrigin: x"), 400),
    ("NUL in a value", head(b"X-A: a\x00b"), 400),
    ("obs-fold with a space", head(b"X-A: 1", b" Origin: https://evil.example"), 400),
    ("obs-fold with a tab", head(b"X-A: 1", b"\tOrigin: https://evil.example"), 400),
    ("space before the colon", head(b"Origin : https://e.com"), 400),
    ("line without a colon", head(b"NoColon"), 400),
    ("duplicate Host", head(b"Host: other"), 400),
    ("duplicate Upgrade", head(b"Upgrade: websocket"), 400),
    ("duplicate Sec-WebSocket-Key", head(KEY), 400),
    ("duplicate Sec-WebSocket-Version", head(b"Sec-WebSocket-Version: 13"), 400),
    ("duplicate Authorization", head(b"Authorization: Bearer a", b"authorization: Bearer b"), 400),
    ("duplicate Origin", head(b"Origin: https://a.example", b"Origin: https://b.example"), 400),
    ("empty line before the request line", b"\r\n" + head(), 400),
    ("fragment in the target", head(lines=(b"GET /ws#x HTTP/1.1", *LINES[1:])), 400),
    ("HTTP/2.0", head(lines=(b"GET /ws HTTP/2.0", *LINES[1:])), 505),
    ("oversized head", head(b"X-Pad: " + b"a" * LIMIT), 431),
    ("oversized head that never ends", head()[:-2] + b"X-Pad: " + b"a" * 65536, 431),
]

#: Bytes that end, split or strip a line for some reader (str.splitlines,
#: str.strip on latin-1 or UTF-8, a lenient HTTP parser), and HTTP syntax.
RISKY = [b"\r", b"\n", b"\r\n", b"\n\n", b"\r\n\r\n", b"\x85", b"\xa0", b"\x0b", b"\x0c", b"\x1c",
         b"\x1d", b"\x1e", b"\x00", b"\x7f", b"\t", b" ", b":", b"#", b"\xc3\xa9", b"\xe2\x80\xa8",
         b"\xff", b"Origin: x", b"\r\n Origin: x", b"\r\nHost: x"]
EXTRA = [b"Origin: https://e.com", b"X-Forwarded-For: 1.2.3.4, 5.6.7.8", b"Authorization: Bearer t",
         b"Sec-WebSocket-Protocol: odinws", b"Sec-WebSocket-Protocol: chat", b"Cookie: a=b",
         b"Connection: keep-alive", b"Host: other", KEY, b"X-Empty:", b"X-Tab:\tv\t"]


class _Transport(StringTransport):
    """The parent's client transport; the descriptor behind fileno() is the test's pipe."""

    def __init__(self, fd: int, peer: IPv4Address):
        super().__init__(peerAddress=peer)
        self._fd = fd

    def fileno(self) -> int:
        return self._fd


class HeadDifferentialTests(ShardTestCase):
    settings = {"keepalive.idle_timeout": 0}

    def setUp(self):
        super().setUp()
        self.assertEqual(self.config["listen.max_head_bytes"], LIMIT)
        self.handle = FakeShard(0, capacity=10 ** 9)
        self.handle.answer = lambda command, kw: {"connections": 1}
        self.patch(handoff, "release", lambda transport: None)
        self.dispatcher = make_dispatcher(self.clock, make_settings(self.config),
                                          lambda: [self.handle])
        r, w = os.pipe()
        self.addCleanup(os.close, r)
        self.addCleanup(os.close, w)
        self.fd = r
        self.addresses = (f"10.{n // 65536 % 256}.{n // 256 % 256}.{n % 256}"
                          for n in itertools.count(1))
        self.requests: list = []
        on_connect = ClientProtocol.onConnect

        def recording(proto, request):
            self.requests.append(request)
            return on_connect(proto, request)
        self.patch(ClientProtocol, "onConnect", recording)

    def parent_verdict(self, data: bytes) -> tuple[object, bytes | None]:
        """The parent's verdict: ("accept", bytes handed over) or (status or "pending", None)."""
        proto = self.dispatcher.buildProtocol(None)
        transport = _Transport(self.fd, IPv4Address("TCP", next(self.addresses), 5555))
        proto.makeConnection(transport)
        proto.dataReceived(data)
        calls, self.handle.calls = self.handle.calls, []
        self.handle.connections = 0
        if calls:
            return "accept", calls[0][1]["head"]
        return _status(transport.value()) or "pending", None

    def shard_verdict(self, data: bytes) -> tuple[object, Any]:
        """The shard's verdict: ("accept", request Autobahn read) or (status or "pending", None)."""
        self.requests.clear()
        client = ShardClient(self.shard, next(self.addresses))
        client.send(data)
        status = _status(client.transport.value())
        if status == 101:
            [request] = self.requests
            return "accept", request
        return status or "pending", None

    def assertSameVerdict(self, what: str, data: bytes) -> object:
        """Both sides give one verdict; when they accept they read the same head."""
        verdict, handed = self.parent_verdict(data)
        shard_verdict, request = self.shard_verdict(data)
        self.assertEqual(verdict, shard_verdict, f"{what}: parent {verdict}, shard {shard_verdict}")
        if verdict == "accept":
            self.assertEqual(handed, data, f"{what}: the parent changed the bytes")
            seen = parse(data, LIMIT)
            self.assertIsInstance(seen, RequestHead)
            self.assertEqual((request.path, request.headers), (seen.path, seen.headers),
                             f"{what}: Autobahn read other headers than the parent")
        return verdict

    def test_corpus(self):
        """
        Every input of the corpus (bare LF, CR alone, 0x85 and other
        non-ASCII bytes, controls, obs-fold, duplicate headers, pipelined
        bytes, oversized heads) gets the same verdict from the parent and
        the shard, and the verdict the corpus names.
        """
        for what, data, expected in CORPUS:
            self.assertEqual(self.assertSameVerdict(what, data), expected, what)

    def test_pipelined_frame_read_once_open(self):
        """A frame pipelined behind the head is handed over and read once the WebSocket is open."""
        data = head() + client_frame(1, b'{"type":"ping","id":1}')
        self.assertEqual(self.parent_verdict(data), ("accept", data))
        client = ShardClient(self.shard, next(self.addresses))
        client.send(data)
        self.assertTrue(client.transport.value().endswith(b'{"type":"pong","id":1}'))

    @hypothesis_settings(max_examples=150, deadline=None, database=None)
    @given(st.lists(st.sampled_from(EXTRA), max_size=3),
           st.lists(st.tuples(st.integers(min_value=0), st.sampled_from(RISKY)), max_size=3),
           st.binary(max_size=8))
    def test_fuzz(self, extra, insertions, after):
        """
        A valid upgrade with extra headers, risky bytes inserted anywhere
        and bytes after it: a head the shared parser refuses gets the same
        status from both sides; the shard never opens what the parent did
        not hand over, and reads the headers the parent read. (Past the head
        the shard may be stricter: Autobahn also validates the WebSocket
        handshake, e.g. a subprotocol offered twice, which the parent does not.)
        """
        data = head(*extra)
        for position, piece in insertions:
            position %= len(data) + 1
            data = data[:position] + piece + data[position:]
        data += after
        if not isinstance(parse(data, LIMIT), RequestHead):
            self.assertSameVerdict(repr(data), data)
            return
        verdict, handed = self.parent_verdict(data)
        shard_verdict, request = self.shard_verdict(data)
        if shard_verdict == "accept":
            self.assertEqual((verdict, handed), ("accept", data), repr(data))
            seen = parse(data, LIMIT)
            self.assertEqual((request.path, request.headers), (seen.path, seen.headers), repr(data))
        self.assertNotEqual(shard_verdict, "pending", repr(data))


def _status(data: bytes) -> int | None:
    if not data.startswith(b"HTTP/1.1 "):
        return None
    return int(data.split(b" ", 2)[1])
