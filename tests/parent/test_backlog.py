"""
Tests for L{odin_ws.parent.backlog}: the node says at start when the kernel
grants the public listener a smaller backlog than it asks for.
"""

from __future__ import annotations

import os

from twisted.internet.endpoints import serverFromString
from twisted.internet.testing import MemoryReactor
from twisted.trial.unittest import SynchronousTestCase

from odin_ws.parent import backlog


class SomaxconnTests(SynchronousTestCase):
    """Reading net.core.somaxconn."""

    def test_read(self):
        """The number in the file is the cap."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("4096\n")
        self.assertEqual(backlog.somaxconn(path), 4096)

    def test_unreadable(self):
        """No file (not Linux) or no number: unknown, not an error."""
        self.assertIsNone(backlog.somaxconn(self.mktemp()))
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("many\n")
        self.assertIsNone(backlog.somaxconn(path))

    def test_this_machine(self):
        """On Linux the kernel's file reads as a positive number."""
        if not os.path.exists(backlog.SOMAXCONN):
            self.assertIsNone(backlog.somaxconn())
        else:
            cap = backlog.somaxconn()
            assert cap is not None
            self.assertGreater(cap, 0)


class CappedTests(SynchronousTestCase):
    """The warning for a backlog the kernel caps."""

    def endpoint(self, description: str):
        return serverFromString(MemoryReactor(), description)

    def test_larger_than_the_cap(self):
        """backlog=16384 under a cap of 4096: a warning naming both and the sysctl."""
        text = backlog.capped(self.endpoint("tcp:3005:backlog=16384"), 4096)
        assert text is not None
        self.assertIn("backlog of 16384", text)
        self.assertIn("net.core.somaxconn is 4096", text)
        self.assertIn("sysctl -w net.core.somaxconn=16384", text)

    def test_within_the_cap(self):
        """At or under the cap, and Twisted's default 50: nothing to say."""
        self.assertIsNone(backlog.capped(self.endpoint("tcp:3005:backlog=4096"), 4096))
        self.assertIsNone(backlog.capped(self.endpoint("tcp6:3005"), 4096))

    def test_unknown(self):
        """
        A cap that cannot be read, or an endpoint without a backlog of its
        own (systemd's socket has its unit's Backlog=): nothing.
        """
        self.assertIsNone(backlog.capped(self.endpoint("tcp:3005:backlog=16384"), None))
        self.assertIsNone(backlog.capped(object(), 1))
