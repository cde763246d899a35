"""
permessage-deflate (RFC 7692) for the event frames: each event compressed
once per shard and server window size, whatever the number of connections
that get it (docs/architecture.md, "Compression, once per event").

Why this works: the server always answers with C{server_no_context_takeover},
so a compressed message never refers to an earlier one and the same bytes
serve every connection whose client accepted the same server window
(C{server_max_window_bits}, 15 unless the client asked for less). A
connection's L{variant} says which of those payloads it gets: L{PLAIN} (no
compression negotiated) or one per window size. One zlib stream per window
size serves the whole shard: C{Z_FULL_FLUSH} after each message resets its
state, which is what a fresh compressor would start from, without paying
zlib's ~256 KB of allocation per event.

Only event frames of the fan-out are compressed; replies, notices, catch-up
and recovery frames go out uncompressed (RFC 7692 lets the sender choose per
message): they are per connection, and Autobahn's compressor would keep
zlib's state on every connection that ever got one.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING, Any

from autobahn.websocket.compress_deflate import PerMessageDeflateOffer, PerMessageDeflateOfferAccept

if TYPE_CHECKING:
    from odin_ws.shard.delivery.writestats import WriteStats

#: The extension's name in C{Sec-WebSocket-Extensions}.
EXTENSION = "permessage-deflate"
#: L{variant} of a connection that did not negotiate compression.
PLAIN = 0
#: The server window sizes permessage-deflate allows and zlib's raw deflate
#: honours (zlib turns 8 into 9, which a client that asked for 8 cannot read:
#: such an offer is declined).
WINDOW_BITS = range(9, 16)
#: Variants: PLAIN, then one per window size (L{variant}).
VARIANTS = 1 + len(WINDOW_BITS)
#: The server window when the client does not ask for one (RFC 7692, 7.1.2.1).
DEFAULT_WINDOW_BITS = 15

# RFC 7692, 7.2.1: the empty stored block a sync (or full) flush ends with,
# left off the wire.
_TAIL = b"\x00\x00\xff\xff"
_LEN16 = struct.Struct("!BBH").pack
_LEN64 = struct.Struct("!BBQ").pack
# FIN, RSV1 (compressed), opcode 1 (text).
_DEFLATED_TEXT = 0xC1
#: Collections whose C{in} is a hash lookup (L{Deflate.used_by}).
_HASHED: tuple[type, ...] = (set, frozenset, type({}.keys()))


def variant(window_bits: int) -> int:
    """The variant of a connection compressed with a server window of C{window_bits}."""
    return window_bits - WINDOW_BITS.start + 1


def payload_of(frame: bytes) -> bytes:
    """The payload of an unmasked frame as L{odin_ws.shard.delivery.frames.text_frame} builds it."""
    n = frame[1] & 0x7F
    return frame[2 if n < 126 else 4 if n == 126 else 10:]


def deflated_frame(data: bytes) -> bytes:
    """A final text frame with RSV1 set carrying the compressed payload C{data}."""
    n = len(data)
    if n < 126:
        return bytes((_DEFLATED_TEXT, n)) + data
    if n < 0x10000:
        return _LEN16(_DEFLATED_TEXT, 126, n) + data
    return _LEN64(_DEFLATED_TEXT, 127, n) + data


class FrameDeflater:
    """One shard's compressor for one server window size: text frames in, RSV1 frames out."""

    def __init__(self, window_bits: int, min_bytes: int):
        self.min_bytes = min_bytes
        # zlib's default level: on event-sized JSON, levels 1 to 9 differ by
        # ~1% in size and not measurably in time (docs/performance.md).
        self._zlib = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -window_bits)

    def frame(self, frame: bytes) -> bytes:
        """
        C{frame}'s payload compressed, framed with RSV1; C{frame} itself
        when its payload is under C{min_bytes} or would not get smaller.
        """
        payload = payload_of(frame)
        if len(payload) < self.min_bytes:
            return frame
        z = self._zlib
        data = z.compress(payload) + z.flush(zlib.Z_FULL_FLUSH)
        if data.endswith(_TAIL):
            data = data[:-4]
        if len(data) >= len(payload):
            return frame
        return deflated_frame(data)


class Deflate:
    """
    The shard's compression of event frames: whether it is offered, the
    compressor of each window size in use, and the open connections that
    use each variant (a run of the C send loop is compressed for the
    variants of its own recipients only, L{used_by}).
    """

    def __init__(self, stats: WriteStats, enabled: bool, min_bytes: int):
        self.stats = stats
        self.enabled = enabled
        self.min_bytes = min_bytes
        #: Open connections (their Outboxes) per variant (index L{PLAIN} unused).
        self.members: list[set[Any]] = [set() for _ in range(VARIANTS)]
        self._deflaters: list[FrameDeflater | None] = [None] * VARIANTS
        self._in_use: list[int] = []

    def reconfigure(self, enabled: bool, min_bytes: int) -> None:
        """Reloaded settings: offered to new connections or not; the threshold for new events."""
        self.enabled = enabled
        if min_bytes != self.min_bytes:
            self.min_bytes = min_bytes
            self._deflaters = [None] * VARIANTS

    def frame(self, v: int, frame: bytes) -> bytes:
        """C{frame} as connections of variant C{v} (not L{PLAIN}) get it."""
        deflater = self._deflaters[v]
        if deflater is None:
            deflater = self._deflaters[v] = FrameDeflater(WINDOW_BITS.start + v - 1,
                                                          self.min_bytes)
        out = deflater.frame(frame)
        if out is not frame:
            self.stats.deflated += 1
        return out

    def in_use(self) -> list[int]:
        """The variants (not L{PLAIN}) some open connection uses, in order."""
        return self._in_use

    def used_by(self, outboxes: Collection[Any]) -> list[int]:
        """
        The variants (not L{PLAIN}) some of C{outboxes} use, in order: what
        a run for them must be compressed for. Cheap while the shard has no
        compressed connection (the common plain case: no work at all) and
        when recipients are compressed (the first one found answers);
        otherwise a set intersection test, over the smaller side when
        C{outboxes} hashes (the index's views do).
        """
        in_use = self._in_use
        if not in_use:
            return in_use
        out = []
        hashed = type(outboxes) in _HASHED
        for v in in_use:
            members = self.members[v]
            if hashed and len(members) < len(outboxes):
                if any(m in outboxes for m in members):
                    out.append(v)
            elif not members.isdisjoint(outboxes):
                out.append(v)
        return out

    def opened(self, v: int, outbox: Any) -> None:
        """C{outbox}'s connection, of variant C{v}, opened."""
        self.members[v].add(outbox)
        self._in_use = [u for u in range(1, VARIANTS) if self.members[u]]

    def closed(self, v: int, outbox: Any) -> None:
        """C{outbox}'s connection, of variant C{v}, closed."""
        self.members[v].discard(outbox)
        self._in_use = [u for u in range(1, VARIANTS) if self.members[u]]


class ServerAccept(PerMessageDeflateOfferAccept):
    """
    Autobahn's accept of a permessage-deflate offer, answering
    C{server_no_context_takeover} whether the client asked for it or not
    (RFC 7692, 7.1.1.1 allows it; Autobahn's own names it only when asked),
    and C{client_no_context_takeover} (7.1.1.2).
    """

    def get_extension_string(self) -> str:
        answer = f"{EXTENSION}; server_no_context_takeover"
        if self.offer.request_max_window_bits:
            answer += f"; server_max_window_bits={self.offer.request_max_window_bits}"
        if self.request_no_context_takeover:
            answer += "; client_no_context_takeover"
        return answer


def accept(offers: Sequence[Any]) -> ServerAccept | None:
    """
    The first permessage-deflate offer this server can honour, accepted
    without context takeover on either side; None declines them all (the
    connection proceeds uncompressed). Offers Autobahn could not parse
    never get here (L{valid_offer}).
    """
    for offer in offers:
        if isinstance(offer, PerMessageDeflateOffer):
            # Neither side takes context over: the server's payloads are
            # shared, and the client's inflater lives for one message
            # (odin_ws/shard/clients/autobahn_internals.py).
            return ServerAccept(  # type: ignore[no-untyped-call]
                offer, request_no_context_takeover=True, no_context_takeover=True)
    return None


def valid_offer(params: dict[str, list[Any]]) -> bool:
    """
    Whether a permessage-deflate offer's parameters (as Autobahn parses the
    header) are ones this server can honour: defined for an offer, each
    once, with a valid value (RFC 7692, 5: otherwise it must be declined;
    Autobahn would fail the handshake instead). A window of 8 is refused.
    """
    try:
        PerMessageDeflateOffer.parse(params)  # type: ignore[no-untyped-call]
    except Exception:  # Autobahn raises a bare Exception for each case
        return False
    return True
