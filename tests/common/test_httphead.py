"""
Tests for L{odin_ws.common.httphead}: the bounded, never-raising, strict
request-head reader that the parent and the shards share (issue 16).
"""

from typing import cast

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial import unittest

from odin_ws.common.httphead import SINGLE_HEADERS, HeadError, HeadReader, RequestHead, parse

LIMIT = 8192
UPGRADE = (b"GET /ws?token=abc&x=1&x=2 HTTP/1.1\r\nHost: example.org\r\n"
           b"Upgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")


class ParseTests(unittest.TestCase):
    def assertError(self, data: bytes, status: int, limit: int = LIMIT) -> HeadError:
        result = parse(data, limit)
        self.assertIsInstance(result, HeadError)
        self.assertEqual(result.status, status, result.reason)
        return cast(HeadError, result)

    def test_upgrade_request(self):
        """A WebSocket upgrade parses into method, target, path, query, version and headers."""
        head = parse(UPGRADE, LIMIT)
        self.assertIsInstance(head, RequestHead)
        self.assertEqual(head.method, "GET")
        self.assertEqual(head.target, "/ws?token=abc&x=1&x=2")
        self.assertEqual(head.path, "/ws")
        self.assertEqual(head.query, {"token": "abc", "x": "1"})
        self.assertEqual(head.version, "HTTP/1.1")
        self.assertEqual(head.headers["upgrade"], "websocket")
        self.assertEqual(head.headers["host"], "example.org")
        self.assertTrue(head.header_has_token("connection", "upgrade"))
        self.assertFalse(head.header_has_token("connection", "close"))
        self.assertEqual(head.raw, UPGRADE)

    def test_need_more(self):
        """Every strict prefix of a valid head is "need more", never an error."""
        for i in range(len(UPGRADE)):
            self.assertIsNone(parse(UPGRADE[:i], LIMIT), UPGRADE[:i])

    def test_bytes_after_head_kept(self):
        """Bytes that follow the head stay in C{raw} so they can be replayed."""
        head = parse(UPGRADE + b"\x81\x85early", LIMIT)
        self.assertEqual(head.raw, UPGRADE + b"\x81\x85early")

    def test_bare_lf(self):
        """A line ended by a bare LF is 400, wherever it is: request line, header, end of head."""
        for data in [b"GET /health HTTP/1.1\nHost: h\r\n\r\n",
                     b"GET /health HTTP/1.1\r\nHost: h\nX-A: 1\r\n\r\n",
                     b"GET /health HTTP/1.1\r\nHost: h\r\n\n",
                     b"GET /health HTTP/1.1\nHost: h\nX-A: 1\n\n"]:
            self.assertEqual(self.assertError(data, 400).reason, "line not ended by CRLF")

    def test_cr_alone(self):
        """A CR not followed by LF is 400, also before the line ends (no need to wait for more)."""
        for data in [b"GET / HTTP/1.1\rHost: h\r\n\r\n",
                     b"GET / HTTP/1.1\r\nHost: h\r\r\n\r\n",
                     b"GET / HTTP/1.1\r\nHost: h\r\nX: a\rb\r\n\r\n",
                     b"GET / HTTP/1.1\r\nHost: h\r\nX: a\rb",
                     b"GET / HTTP/1.1\r\nHost: h\r\n\rX"]:
            self.assertEqual(self.assertError(data, 400).reason, "CR without LF in the request head")
        self.assertIsNone(parse(b"GET / HTTP/1.1\r\nHost: h\r", LIMIT), "a final CR may be a CRLF")

    def test_head_ends_at_first_crlf_crlf(self):
        """The head ends at the first CRLF CRLF: what follows is not read as headers."""
        head = parse(b"GET / HTTP/1.1\r\nHost: h\r\n\r\nOrigin: x\r\n\r\n", LIMIT)
        self.assertNotIn("origin", head.headers)
        self.assertEqual(head.size, len(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"))

    def test_crlf_lf_with_64k_after(self):
        """
        The issue's case, a head ending in CRLF LF then 64 KiB: 400 at once
        (not "need more", not 431 after buffering), and the reader keeps no
        more than the limit.
        """
        reader = HeadReader(LIMIT)
        result = reader.feed(UPGRADE[:-2] + b"\n" + b"A" * 65536)
        self.assertEqual((result.status, result.reason), (400, "line not ended by CRLF"))
        self.assertLessEqual(reader.buffered, LIMIT + 1)

    def test_obs_text_refused(self):
        """
        Bytes 0x80-0xff in a header value are 400: 0x85 is a line break and
        0xa0 white space to Python's latin-1 string methods (Autobahn's).
        """
        for byte in [0x85, 0xa0, 0x80, 0xc3, 0xff]:
            data = b"GET / HTTP/1.1\r\nHost: h\r\nX-A: a" + bytes([byte]) + b"b\r\n\r\n"
            self.assertEqual(self.assertError(data, 400).reason, "byte not allowed in a header value")
        self.assertError(b"GET / HTTP/1.1\r\nHost: h\r\nX\x85A: 1\r\n\r\n", 400)
        self.assertError(b"GET /\x85 HTTP/1.1\r\nHost: h\r\n\r\n", 400)

    def test_controls_refused(self):
        """Every control but HTAB in a value is 400; HTAB and spaces inside a value stay."""
        for byte in [*range(0, 9), *range(10, 32), 0x7f]:
            data = b"GET / HTTP/1.1\r\nHost: h\r\nX-A: a" + bytes([byte]) + b"b\r\n\r\n"
            self.assertError(data, 400)
        head = parse(b"GET / HTTP/1.1\r\nHost: h\r\nX-A: \ta \t b\t \r\n\r\n", LIMIT)
        self.assertEqual(head.headers["x-a"], "a \t b")

    def test_duplicate_single_headers(self):
        """Each header of SINGLE_HEADERS may appear once, in any spelling; a repeat is 400."""
        for name in SINGLE_HEADERS:
            data = (b"GET / HTTP/1.1\r\nHost: h\r\n" + name.encode() + b": a\r\n"
                    + name.upper().encode() + b": b\r\n\r\n")
            if name == "host":
                data = b"GET / HTTP/1.1\r\nHost: h\r\nHOST: b\r\n\r\n"
            self.assertEqual(self.assertError(data, 400).reason, f"repeated {name} header")

    def test_repeated_headers_joined(self):
        """Repeated headers are joined with ", " and names are lowercased."""
        head = parse(b"GET / HTTP/1.1\r\nHost: h\r\nX-Thing: a\r\nx-thing:  b \r\n\r\n", LIMIT)
        self.assertEqual(head.headers["x-thing"], "a, b")

    def test_leading_empty_line(self):
        """An empty line before the request line is 400: the head starts with the request line."""
        self.assertError(b"\r\nGET / HTTP/1.0\r\n\r\n", 400)
        self.assertError(b"\r\n\r\n", 400)

    def test_fragment_refused(self):
        """A request target with a fragment (#) is 400, as Autobahn refuses it."""
        self.assertError(b"GET /ws#x HTTP/1.1\r\nHost: h\r\n\r\n", 400)

    def test_absolute_form(self):
        """An absolute-form target gives its path and query."""
        head = parse(b"GET http://h:1/ws?a=b HTTP/1.1\r\nHost: h\r\n\r\n", LIMIT)
        self.assertEqual((head.path, head.query), ("/ws", {"a": "b"}))

    def test_too_large(self):
        """A head over the limit is 431, whether or not it has ended."""
        filler = b"X-Pad: " + b"a" * 600 + b"\r\n"
        self.assertError(b"GET / HTTP/1.1\r\nHost: h\r\n" + filler, 431, limit=512)
        self.assertError(b"GET / HTTP/1.1\r\nHost: h\r\n" + filler + b"\r\n", 431, limit=512)
        self.assertError(b"G" * 600, 431, limit=512)

    def test_bytes_after_head_count(self):
        """Bytes read after the head count against the limit with it: 431 past it."""
        base = b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"
        self.assertIsInstance(parse(base + b"x" * (512 - len(base)), 512), RequestHead)
        self.assertError(base + b"x" * (513 - len(base)), 431, limit=512)

    def test_exact_limit(self):
        """A head of exactly the limit is accepted; one byte more is not."""
        base = b"GET / HTTP/1.1\r\nHost: h\r\nX: \r\n\r\n"
        data = base.replace(b"X: ", b"X: " + b"a" * (512 - len(base)))
        self.assertEqual(len(data), 512)
        self.assertIsInstance(parse(data, 512), RequestHead)
        self.assertError(data.replace(b"X: ", b"X: a"), 431, limit=512)

    def test_bad_version(self):
        """HTTP/2.0 or 0.9-style versions are 505; garbage versions are 400."""
        self.assertError(b"GET / HTTP/2.0\r\n\r\n", 505)
        self.assertError(b"GET / HTTP/1\r\n\r\n", 400)
        self.assertError(b"GET / FTP/1.1\r\n\r\n", 400)

    def test_malformed(self):
        """Malformed request lines and header lines are 400."""
        for data in [b"GET /\r\n\r\n", b"GET  / HTTP/1.1\r\nHost: h\r\n\r\n",
                     b"G(T / HTTP/1.1\r\nHost: h\r\n\r\n", b"GET ws HTTP/1.1\r\nHost: h\r\n\r\n",
                     b"GET /\x01 HTTP/1.1\r\nHost: h\r\n\r\n",
                     b"GET / HTTP/1.1\r\nHost: h\r\nNo colon\r\n\r\n",
                     b"GET / HTTP/1.1\r\nHost: h\r\nBad Name: v\r\n\r\n",
                     b"GET / HTTP/1.1\r\nHost : h\r\n\r\n",
                     b"GET / HTTP/1.1\r\nHost: h\r\n folded\r\n\r\n",
                     b"GET / HTTP/1.1\r\nHost: h\r\nX: a\x00b\r\n\r\n",
                     b"GET / HTTP/1.1\r\nHost: h\r\nX: a\rb\r\n\r\n",
                     b"\r\n\r\n\r\n\r\n\r\n\r\nGET / HTTP/1.0\r\n\r\n",
                     b"GET http://[::1/ HTTP/1.1\r\nHost: h\r\n\r\n"]:
            self.assertError(data, 400)

    def test_host_required_for_http11(self):
        """HTTP/1.1 without Host is 400 (RFC 9112 3.2); HTTP/1.0 may omit it."""
        self.assertError(b"GET / HTTP/1.1\r\n\r\n", 400)
        self.assertIsInstance(parse(b"GET / HTTP/1.0\r\n\r\n", LIMIT), RequestHead)


class HeadReaderTests(unittest.TestCase):
    def test_byte_by_byte(self):
        """Fed one byte at a time, the reader answers "need more" until the last byte."""
        reader = HeadReader(LIMIT)
        for i in range(len(UPGRADE) - 1):
            self.assertIsNone(reader.feed(UPGRADE[i:i + 1]))
        head = reader.feed(UPGRADE[-1:])
        self.assertEqual(head.path, "/ws")
        self.assertEqual(head.raw, UPGRADE)

    def test_trickle_over_limit(self):
        """A client trickling header lines forever gets 431 once past the limit."""
        reader = HeadReader(512)
        reader.feed(b"GET / HTTP/1.1\r\n")
        result = None
        for _ in range(600):
            result = reader.feed(b"a:\r\n")
            if result is not None:
                break
        self.assertEqual(result.status, 431)


class FuzzTests(unittest.TestCase):
    @settings(max_examples=300, deadline=None, database=None)
    @given(st.binary(max_size=1200), st.integers(min_value=1, max_value=1024))
    def test_any_bytes(self, data, limit):
        """Any bytes give a head, "need more" or a HeadError; nothing raises."""
        result = parse(data, limit)
        self.assertIsInstance(result, (RequestHead, HeadError, type(None)))
        if result is None:
            self.assertLessEqual(len(data), limit)

    @settings(max_examples=200, deadline=None, database=None)
    @given(st.lists(st.sampled_from([b"GET", b" ", b"/", b"ws", b"?", b"a=%zz", b"&", b"HTTP/1.1",
                                     b"HTTP/9.9", b"\r\n", b"\n", b"\r", b":", b"Host", b"\t",
                                     b"\x00", b"\xff", b"http://", b"[", b"#"]), max_size=60),
           st.lists(st.integers(min_value=1, max_value=7), max_size=20))
    def test_structured_chunks(self, pieces, cuts):
        """
        HTTP-shaped input fed in arbitrary chunks never raises and answers
        what a one-shot parse of the bytes read so far answers; a refusal
        never depends on bytes that come later.
        """
        data = b"".join(pieces)
        reader = HeadReader(256)
        result, pos = None, 0
        for cut in cuts + [len(data)]:
            result = reader.feed(data[pos:pos + cut])
            pos += cut
            if result is not None or pos >= len(data):
                break
        self.assertIsInstance(result, (RequestHead, HeadError, type(None)))
        self.assertEqual(result, parse(data[:pos], 256))
        if not isinstance(result, RequestHead):
            self.assertEqual(result, parse(data, 256))
