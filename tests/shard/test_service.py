"""
The shard service's relay of what it consumed (L{odin_ws.shard.service.Shard._publish}):
through the parent's hub to the other shards, and not at all on a node of one shard.
"""

from __future__ import annotations

import time

from twisted.internet.defer import succeed

from odin_ws.common import commands
from odin_ws.common.events import Event, decode_batch
from tests.helpers import ShardTestCase


class RecordingLink:
    """The parent link's C{callRemote}: records each command and its arguments."""

    def __init__(self):
        self.calls: list[tuple[type, dict]] = []

    def callRemote(self, command, **kwargs):
        self.calls.append((command, kwargs))
        return succeed({})


def events(count: int) -> list[Event]:
    now = int(time.time() * 1000)
    return [Event.build("ABC", "trade", b'{"seq":%d}' % i, now, "odin.trades", 0, i)
            for i in range(count)]


class RelayTests(ShardTestCase):
    """A node of several shards relays each consumed batch through the hub."""

    settings = {"shards": 2}

    def test_consumedBatchIsPublished(self):
        """
        A batch this shard consumed goes to the parent as one Publish of the
        encoded batch, and the consumer waits for its answer (the Deferred).
        """
        link = self.shard.link = RecordingLink()
        taken = self.shard.delivery.on_kafka_batch(events(3))
        self.assertEqual([c for c, _ in link.calls], [commands.Publish])
        self.assertEqual([e.offset for e in decode_batch(link.calls[0][1]["batch"])], [0, 1, 2])
        self.assertIsNotNone(taken)


class SingleShardRelayTests(ShardTestCase):
    """A node of one shard has no one to relay to."""

    settings = {"shards": 1}

    def test_noRoundTripThroughTheParent(self):
        """
        With one shard a consumed batch is delivered and taken at once: no
        Publish to the parent, nothing for the consumer to wait for.
        """
        link = self.shard.link = RecordingLink()
        client = self.connect()
        self.subscribe(client, "odin.token.ABC.trade")
        taken = self.shard.delivery.on_kafka_batch(events(2))
        self.advance(0)
        self.assertIsNone(taken)
        self.assertEqual(link.calls, [])
        self.assertEqual([m["data"]["seq"] for m in client.messages() if m["type"] == "event"],
                         [0, 1])
