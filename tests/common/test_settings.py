"""Tests for L{odin_ws.common.settings}: the typed view covers the schema exactly."""

from __future__ import annotations

from dataclasses import FrozenInstanceError, fields

from twisted.trial.unittest import SynchronousTestCase

from odin_ws.common import config as configmod
from odin_ws.common.settings import _SECTIONS, Settings


class SettingsTests(SynchronousTestCase):
    def test_covers_the_schema_exactly(self):
        """Every schema key has a typed field and every field a schema key."""
        typed = {f.name for f in fields(Settings)} - set(_SECTIONS) - {"config"}
        for name, section in _SECTIONS.items():
            typed |= {f"{name}.{f.name}" for f in fields(section)}
        self.assertEqual(typed, {o.key for o in configmod.SCHEMA})

    def test_values_and_frozen(self):
        """Values come from the config (lists as tuples, dicts read-only); nothing can be set."""
        cfg = configmod.Config(configmod.validate({
            "limits.max_connections": 77, "limits.trusted_proxies": ["10.0.0.1"],
            "node_id": "n1"}))
        s = Settings.from_config(cfg)
        self.assertEqual((s.limits.max_connections, s.limits.trusted_proxies, s.node_id),
                         (77, ("10.0.0.1",), "n1"))
        self.assertEqual(s.group_id, "odinws-n1")
        self.assertEqual(s.kafka.topics["odin.trades"], "trade")
        with self.assertRaises(FrozenInstanceError):
            s.limits.max_connections = 1
        with self.assertRaises(TypeError):
            s.kafka.topics["x"] = "y"

    def test_apply_live_then_settings(self):
        """A reload's settings take live keys from the new config and keep the rest."""
        old = configmod.Config(configmod.validate({}))
        new = old.replace(limits__message_rate=1.0, shards=4)
        applied, live, restart = configmod.apply_live(old, new)
        s = Settings.from_config(applied)
        self.assertEqual((s.limits.message_rate, s.shards), (1.0, 1))
        self.assertEqual((live, restart), (["limits.message_rate"], ["shards"]))
