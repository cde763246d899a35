"""Tests for L{odin_ws.shard.delivery.compactdelta}: the compact delta frame and its rebuild."""

from __future__ import annotations

import json

from twisted.trial.unittest import SynchronousTestCase

from odin_ws.shard.delivery import compactdelta
from odin_ws.shard.delivery.compactdelta import EXACT
from odinws_client import compactdelta as compactdelta_client


class DiffTests(SynchronousTestCase):
    def test_integers_as_increments(self):
        """
        Changed top-level integers that were integers before go as
        increments; floats, strings, booleans, new members and nested
        members go in the merge patch.
        """
        old = {"seq": 7, "ts": 1000, "price": 1.5, "flag": False, "n": 1, "book": {"bid": 3},
               "same": 4}
        new = {"seq": 8, "ts": 1100, "price": 1.6, "flag": True, "n": 1.0, "book": {"bid": 4},
               "same": 4, "added": 5}
        patch, adds = compactdelta.diff(old, new)
        self.assertEqual(adds, {"seq": 1, "ts": 100})
        self.assertEqual(patch, {"price": 1.6, "flag": True, "n": 1.0, "book": {"bid": 4},
                                 "added": 5})

    def test_beyond_exact_integers(self):
        """An integer outside +-2**53 (before or after) is replaced, never incremented."""
        patch, adds = compactdelta.diff({"a": EXACT - 1, "b": EXACT}, {"a": EXACT, "b": 1})
        self.assertEqual((patch, adds), ({"a": EXACT, "b": 1}, {}))

    def test_what_a_merge_patch_cannot_say(self):
        """Non-object data, or a null member, has no compact delta either."""
        self.assertIsNone(compactdelta.diff([1], [2]))
        self.assertIsNone(compactdelta.diff({"a": 1}, {"a": None}))


class FrameTests(SynchronousTestCase):
    def test_payloads_and_apply(self):
        """
        The frame is [sid, dpos, dts, patch(, adds)]; applied to the
        stream's previous event it gives the new event exactly, pos included.
        """
        last = {"channel": "odin.token.A.price", "data": {"p": 1.5, "seq": 9},
                "ts": 1764000000000, "pos": "odin.prices:3:1k9x2f:12345"}
        short = compactdelta.frame_payload(4, 2, 150, {"p": 1.6}, {})
        self.assertEqual(short, b'[4,2,150,{"p":1.6}]')
        full = compactdelta.frame_payload(4, 2, 150, {"p": 1.6}, {"seq": 1})
        self.assertEqual(json.loads(full), [4, 2, 150, {"p": 1.6}, {"seq": 1}])
        rebuilt = compactdelta_client.rebuild(last, json.loads(full))
        self.assertEqual({k: rebuilt[k] for k in ("channel", "data", "ts", "pos")},
                         {"channel": "odin.token.A.price", "data": {"p": 1.6, "seq": 10},
                          "ts": 1764000000150, "pos": "odin.prices:3:1k9x2f:12347"})
        self.assertEqual(compactdelta_client.rebuild(last, json.loads(short))["data"],
                         {"p": 1.6, "seq": 9})

    def test_whole_payload(self):
        """A whole event of a compact stream is its envelope with "sid" added."""
        envelope = b'{"type":"event","channel":"odin.token.A.price","data":{},"ts":1,"pos":"t:0:0:1"}'
        doc = json.loads(compactdelta.whole_payload(envelope, 12))
        self.assertEqual(doc.pop("sid"), 12)
        self.assertEqual(doc, json.loads(envelope))
