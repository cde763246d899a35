"""
Tests for L{odin_ws.shard.delivery.nativesend}: outbound.native's choice of
send loop, its fallback when the extension cannot be loaded (auto: logged
once; on: the node refuses to start), and where the choice is shown
(/health's shard entry, odinws_outbound_native).
"""

from __future__ import annotations

import io
import sys

from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from odin_ws import tap
from odin_ws.common import config as configmod
from odin_ws.common.settings import Settings
from odin_ws.shard.delivery import _sendrun, nativesend
from odin_ws.shard.service import Shard
from tests.helpers import FakeOptions, FakeReactor, sample


class SelectTests(SynchronousTestCase):
    def unloadable(self) -> None:
        """Make the extension fail to import, as where it was not built."""
        saved = sys.modules.get(nativesend.EXTENSION)
        sys.modules[nativesend.EXTENSION] = None  # type: ignore[assignment]  # import raises

        def restore():
            if saved is None:
                sys.modules.pop(nativesend.EXTENSION, None)
            else:
                sys.modules[nativesend.EXTENSION] = saved
        self.addCleanup(restore)
        self.patch(nativesend, "_warned", False)

    def logged(self) -> list:
        events: list = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        return events

    def test_autoAndOnUseTheExtension(self):
        """Where it is built, auto and on run the C loop; off never does."""
        for mode in ("auto", "on"):
            chosen = nativesend.select(mode)
            self.assertIs(chosen.send_runs, _sendrun.send_runs)
            self.assertEqual(chosen.state, nativesend.NATIVE)
        self.assertEqual(nativesend.select("off"), nativesend.NativeSend(None, nativesend.OFF))

    def test_autoFallsBackAndSaysSoOnce(self):
        """auto without the extension: the Python loop, a reason, one warning for the process."""
        self.unloadable()
        events = self.logged()
        first, second = nativesend.select("auto"), nativesend.select("auto")
        self.assertIsNone(first.send_runs)
        self.assertEqual(first.state, nativesend.UNAVAILABLE)
        self.assertIn(nativesend.EXTENSION, first.reason)
        self.assertEqual(second, first)
        warnings = [e for e in events if "pure-Python send loop" in e.get("log_format", "")]
        self.assertEqual(len(warnings), 1)

    def test_onRefusesWithoutTheExtension(self):
        """on without the extension: NativeMissing, naming the setting and the way out."""
        self.unloadable()
        with self.assertRaises(nativesend.NativeMissing) as caught:
            nativesend.select("on")
        self.assertIn("outbound.native is on", str(caught.exception))
        self.assertIn("auto or off", str(caught.exception))

    def test_nodeWithOnRefusesToStart(self):
        """The parent exits at start (status 2), before any shard, when on cannot be met."""
        self.unloadable()
        settings = Settings.from_config(configmod.load(None, environ={}).replace(
            shards=1, cpu_affinity="off", listen__port="tcp:0", listen__admin_port="",
            outbound__native="on"))
        reactor = FakeReactor()
        self.addCleanup(reactor.close_fds)
        stderr = io.StringIO()
        self.patch(sys, "stderr", stderr)
        with self.assertRaises(SystemExit) as caught:
            tap.makeService(FakeOptions(settings), reactor=reactor)
        self.assertEqual(caught.exception.code, 2)
        self.assertIn("configuration error: outbound.native is on", stderr.getvalue())
        self.assertEqual(reactor.processes, [])

    def test_shardShowsItsLoop(self):
        """A shard reports its loop in its status (/health) and in odinws_outbound_native."""
        for mode, state, gauge in (("off", "off", 0), ("auto", "native", 1)):
            settings = Settings.from_config(configmod.load(None, environ={}).replace(
                outbound__native=mode))
            shard = Shard(FakeReactor(), settings, 0, control_fd=None)
            self.assertEqual(shard.native.state, state)
            self.assertEqual(shard.fanout.native is not None, gauge == 1)
            self.assertEqual(sample("odinws_outbound_native"), gauge)
