"""
Tests for L{odin_ws.parent.httpanswer}: the parent's own HTTP responses.
"""

from __future__ import annotations

from twisted.trial import unittest

from odin_ws.parent.httpanswer import phrase, refusal_headers, response_head


class PhraseTests(unittest.TestCase):
    def test_phrase(self):
        """Known statuses get their phrase; unknown ones still get one."""
        self.assertEqual(phrase(431), "Request Header Fields Too Large")
        self.assertEqual(phrase(599), "Error")


class ResponseHeadTests(unittest.TestCase):
    def test_head(self):
        """A complete, uncached, closing HTTP/1.1 head with the extra headers last."""
        head = response_head(503, "text/plain", 12, [("Retry-After", "5")])
        self.assertEqual(head, b"HTTP/1.1 503 Service Unavailable\r\n"
                               b"Content-Type: text/plain\r\n"
                               b"Content-Length: 12\r\n"
                               b"Connection: close\r\n"
                               b"Cache-Control: no-store\r\n"
                               b"Retry-After: 5\r\n\r\n")


class RefusalHeadersTests(unittest.TestCase):
    def test_by_status(self):
        """Retry-After on 429/503 only when given; Allow on 405; Upgrade on 426."""
        self.assertEqual(refusal_headers(503, 7), [("Retry-After", "7")])
        self.assertEqual(refusal_headers(429, None), [])
        self.assertEqual(refusal_headers(405, 7), [("Allow", "GET, HEAD")])
        self.assertEqual(refusal_headers(426, None), [("Upgrade", "websocket")])
        self.assertEqual(refusal_headers(404, 7), [])
