"""Tests for L{odin_ws.common.httphead}: the bounded, never-raising request-head reader."""

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial import unittest

from odin_ws.common.httphead import HeadError, HeadReader, RequestHead, parse

LIMIT = 8192
UPGRADE = (b"GET /ws?token=abc&x=1&x=2 HTTP/1.1\r\nHost: example.org\r\n"
           b"Upgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")


class ParseTests(unittest.TestCase):
    def assertError(self, data: bytes, status: int, limit: int = LIMIT) -> HeadError:
        result = parse(data, limit)
        self.assertIsInstance(result, HeadError)
        self.assertEqual(result.status, status, result.reason)
        return result

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
        """Heads with bare LF line endings are tolerated."""
        head = parse(b"GET /health HTTP/1.1\nHost: h\nX-A: 1\n\n", LIMIT)
        self.assertEqual(head.path, "/health")
        self.assertEqual(head.headers, {"host": "h", "x-a": "1"})

    def test_repeated_headers_joined(self):
        """Repeated headers are joined with ", " and names are lowercased."""
        head = parse(b"GET / HTTP/1.1\r\nHost: h\r\nX-Thing: a\r\nx-thing:  b \r\n\r\n", LIMIT)
        self.assertEqual(head.headers["x-thing"], "a, b")

    def test_leading_empty_line(self):
        """An empty line before the request line is ignored (RFC 9112 2.2)."""
        head = parse(b"\r\nGET / HTTP/1.0\r\n\r\n", LIMIT)
        self.assertEqual(head.version, "HTTP/1.0")

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
            result = reader.feed(b"a:\n")
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
        """HTTP-shaped input fed in arbitrary chunks never raises and matches a one-shot parse."""
        data = b"".join(pieces)
        reader = HeadReader(256)
        result, pos = None, 0
        for cut in cuts + [len(data)]:
            result = reader.feed(data[pos:pos + cut])
            pos += cut
            if result is not None or pos >= len(data):
                break
        self.assertIsInstance(result, (RequestHead, HeadError, type(None)))
        self.assertEqual(_without_raw(result), _without_raw(parse(data, 256)))


def _without_raw(result):
    return replace(result, raw=b"") if isinstance(result, RequestHead) else result
