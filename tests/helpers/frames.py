"""
WebSocket frames by hand: a server-frame parser, masked client frames, a
handshaken Autobahn protocol, numbered event frames.
"""

from __future__ import annotations

import json
import struct
from typing import cast

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.protocol import WebSocketProtocol
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport

from odin_ws.shard.delivery.frames import text_frame


def parse_frames(data: bytes) -> list[tuple[int, bytes]]:
    """(opcode, payload) of each unmasked, final server frame in C{data}."""
    frames, i = [], 0
    while i < len(data):
        b0, b1 = data[i], data[i + 1]
        if not b0 & 0x80 or b1 & 0x80:
            raise ValueError(f"not a final unmasked frame at {i}: {b0:#x} {b1:#x}")
        n, i = b1 & 0x7F, i + 2
        if n == 126:
            n, i = int.from_bytes(data[i:i + 2], "big"), i + 2
        elif n == 127:
            n, i = int.from_bytes(data[i:i + 8], "big"), i + 8
        if i + n > len(data):
            raise ValueError(f"truncated frame at {i}")
        frames.append((b0 & 0x0F, data[i:i + n]))
        i += n
    return frames


PLAIN_UPGRADE = (b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")


def handshaken_protocol(cls=WebSocketServerProtocol) -> tuple[WebSocketServerProtocol,
                                                             StringTransport]:
    """A real Autobahn server protocol, opened over a StringTransport, no timers."""
    factory = WebSocketServerFactory()
    factory.protocol = cls
    factory.setProtocolOptions(openHandshakeTimeout=0, closeHandshakeTimeout=0,
                               autoPingInterval=0)
    proto = cast(WebSocketServerProtocol, factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1)))
    transport = StringTransport()
    proto.makeConnection(transport)
    proto.dataReceived(PLAIN_UPGRADE)
    assert proto.state == OPEN, proto.state
    transport.clear()
    return proto, transport


def client_frame(opcode: int, payload: bytes, fin: bool = True,
                 mask: bytes = b"\x37\xfa\x21\x3d", rsv1: bool = False) -> bytes:
    """One masked client frame, as RFC 6455 requires of clients (C{rsv1}: compressed, RFC 7692)."""
    n = len(payload)
    b0 = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode
    if n < 126:
        head = bytes((b0, 0x80 | n))
    elif n < 1 << 16:
        head = struct.pack("!BBH", b0, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", b0, 0x80 | 127, n)
    key = int.from_bytes((mask * (n // 4 + 1))[:n], "big")
    return head + mask + (int.from_bytes(payload, "big") ^ key).to_bytes(n, "big")


def text(obj: object) -> bytes:
    return client_frame(1, json.dumps(obj).encode())




OPEN = WebSocketProtocol.STATE_OPEN


def event(channel: str, n: int, pad: int = 60) -> bytes:
    """A text frame of fixed size per C{pad}, carrying its channel and number."""
    return text_frame(json.dumps({"c": channel, "n": f"{n:06d}", "p": "x" * pad}).encode())


def events_in(data: bytes) -> list[tuple[str, int]]:
    """(channel, number) of each event frame in C{data} (gap notices: L{gaps_in})."""
    out = []
    for opcode, payload in parse_frames(data):
        assert opcode == 1, opcode
        doc = json.loads(payload)
        if doc.get("type") != "gap":
            out.append((doc["c"], int(doc["n"])))
    return out


def gaps_in(data: bytes) -> list[dict]:
    """The gap notices in C{data}."""
    docs = [json.loads(payload) for _, payload in parse_frames(data)]
    return [doc for doc in docs if doc.get("type") == "gap"]
