"""
Tests for L{odin_ws.shard.delivery.ssefeed} at a fake shard: how a stream's
messages reach its socket (joined per delivery round, through the same
Fanout and C send loop as WebSocket frames).
"""

from __future__ import annotations

import time

from odin_ws.common.events import Event
from tests.helpers import ShardTestCase, StreamClient

TOPIC = "odin.trades"


class JoinedWritesTests(ShardTestCase):
    """
    A stream's messages of one delivery round go out as WebSocket frames do:
    joined into one write, through the C send loop where it is on
    (docs/performance.md, "Server-Sent Events against WebSocket").
    """

    settings = {"kafka__topics": {TOPIC: "trade"}, "outbound__native": "on"}

    def event(self, offset: int) -> Event:
        # Stamped now: history keeps events by age (history.max_age).
        return Event.build("A", "trade", b'{"o":%d}' % offset, int(time.time() * 1000),
                           TOPIC, 0, offset, "ep1")

    def test_one_write_per_round_through_the_send_loop(self):
        """
        Ten events of one delivery batch reach a stream in one transport write,
        not ten, all ten in order; the run that carried them was handed to the
        C send loop with the stream's Outbox as its one recipient.
        """
        s = StreamClient(self.shard)
        self.assertEqual(s.request({"channels": "odin.token.A.trade"}), 200, s.body)
        s.messages()
        writes: list[bytes] = []
        transport = s.transport
        real_write, real_seq = transport.write, transport.writeSequence
        self.patch(transport, "write", lambda data: writes.append(data) or real_write(data))
        self.patch(transport, "writeSequence",
                   lambda seq: writes.append(b"".join(seq)) or real_seq(seq))
        fanout = self.shard.fanout
        loop = fanout.native
        handed: list[list[tuple]] = []

        def recording(runs, writers):
            handed.append([boxes for _, _, boxes in runs])
            return loop(runs, writers)
        fanout.native = recording
        events = [self.event(100 + i) for i in range(10)]
        self.shard.delivery.deliver(events)
        self.assertEqual(len(writes), 1)
        self.assertEqual([m.data.encode() for m in s.messages()], [e.envelope for e in events])
        self.assertEqual(handed, [[(s.proto.outbox,)]])
