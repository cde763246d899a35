"""Tests for L{odin_ws.shard.delivery.frames}: an event's frame, built once for every connection."""

from __future__ import annotations

from autobahn.twisted.websocket import WebSocketServerFactory
from twisted.trial.unittest import SynchronousTestCase

from odin_ws.shard.delivery.frames import Chunk, frame_count, text_frame
from tests.helpers import parse_frames


class TextFrameTests(SynchronousTestCase):
    def test_headerLengths(self):
        """Lengths 0, 125 (7-bit), 126, 65535 (16-bit) and 65536 (64-bit) parse back exactly."""
        for n, marker, header in ((0, 0, 2), (125, 125, 2), (126, 126, 4), (65535, 126, 4),
                                  (65536, 127, 10)):
            payload = bytes(range(256)) * (n // 256) + b"a" * (n % 256)
            frame = text_frame(payload)
            self.assertEqual(frame[0], 0x81, "FIN + text opcode")
            self.assertEqual(frame[1], marker, "unmasked, length marker")
            self.assertEqual(len(frame), header + n)
            self.assertEqual(parse_frames(frame), [(1, payload)])

    def test_sameBytesAsAutobahn(self):
        """The frame equals what Autobahn itself prepares for an uncompressed text message."""
        factory = WebSocketServerFactory()
        for n in (0, 125, 126, 65535, 65536):
            payload = b"x" * n
            self.assertEqual(text_frame(payload), factory.prepareMessage(payload).payloadHybi)

    def test_chunkCountsItsFrames(self):
        """A Chunk carries its frames and their number; frame_count adds channels and Chunks."""
        parts = [(text_frame(b"1"), "a", "t"), (text_frame(b"2"), "b", "t")]
        chunk = Chunk(parts)
        self.assertEqual((chunk.parts, chunk.count), (parts, 2))
        self.assertEqual(frame_count(["a", chunk, "b"]), 4)
