"""
Tests for L{odin_ws.common.settings}: the one definition of every setting,
the schema derived from it, and the typed view built from a configuration.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import FrozenInstanceError, dataclass, fields, is_dataclass
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from odin_ws.common import config as configmod
from odin_ws.common.settings import NODE_DOC, ListenSettings, Settings, setting, spec_of


def _sections() -> dict[str, type[Any]]:
    return {f.name: f.type for f in fields(Settings)
            if isinstance(f.type, type) and is_dataclass(f.type)}


class DefinitionTests(SynchronousTestCase):
    def test_every_section_field_is_a_setting(self) -> None:
        """
        Each field of each section is made by setting() (a bare field would be
        a typed value no file, variable or flag could set), and Settings'
        own fields are sections, the top-level settings and config.
        """
        for name, section in _sections().items():
            for f in fields(section):
                self.assertIsNotNone(spec_of(f), f"{name}.{f.name}")
        rest = {f.name for f in fields(Settings) if spec_of(f) is None} - set(_sections())
        self.assertEqual(rest, {"config"})

    def test_schema_is_the_definitions(self) -> None:
        """
        SCHEMA has one option per setting field, in the definitions' order
        (top-level first), with its spec's default, help, limits and flags.
        """
        expected = [(f.name, spec_of(f)) for f in fields(Settings) if spec_of(f)]
        for name, section in _sections().items():
            expected += [(f"{name}.{f.name}", spec_of(f)) for f in fields(section)]
        got = [(o.key, (o.default, o.help, o.minimum, o.choices, o.live, o.flag,
                        o.example_only)) for o in configmod.SCHEMA]
        self.assertEqual(got, [(key, (s.default, s.help, s.minimum, s.choices, s.live, s.flag,
                                      s.example_only)) for key, s in expected if s])

    def test_kind_follows_the_field_type(self) -> None:
        """A tuple field takes a YAML list, a Mapping field a mapping, the rest their type."""
        kinds = {o.key: o.kind for o in configmod.SCHEMA}
        self.assertEqual((kinds["limits.trusted_proxies"], kinds["kafka.topics"],
                          kinds["listen.head_timeout"], kinds["shards"], kinds["cpu_affinity"]),
                         (list, dict, float, int, object))

    def test_unsupported_type_refused(self) -> None:
        """A setting typed as something the loader cannot check is an error at import."""
        @dataclass(frozen=True)
        class Odd:
            values: set[str] = setting(set(), "A set.")

        self.assertRaises(TypeError, configmod._options, Odd, "odd.")

    def test_section_headings_are_docstrings(self) -> None:
        """The example file's section headings are the section classes' docstrings."""
        self.assertEqual(configmod.SECTIONS[""], NODE_DOC)
        self.assertEqual(configmod.SECTIONS["listen"], ListenSettings.__doc__)
        self.assertEqual(set(configmod.SECTIONS), {""} | set(_sections()))

    def test_env_names(self) -> None:
        """Each setting's environment variable comes from its key, by one rule."""
        self.assertEqual(configmod.BY_KEY["kafka.brokers"].env, "ODINWS_KAFKA_BROKERS")
        self.assertEqual(configmod.BY_KEY["shards"].env, "ODINWS_SHARDS")


class SettingsTests(SynchronousTestCase):
    def test_values_and_frozen(self) -> None:
        """Values come from the config (lists as tuples, dicts read-only); nothing can be set."""
        cfg = configmod.Config(configmod.validate({
            "limits.max_connections": 77, "limits.trusted_proxies": ["10.0.0.1"],
            "node_id": "n1"}))
        s = Settings.from_config(cfg)
        self.assertEqual((s.limits.max_connections, s.limits.trusted_proxies, s.node_id),
                         (77, ("10.0.0.1",), "n1"))
        self.assertEqual(s.group_id, "odinws-n1")
        self.assertIsInstance(s.kafka.topics, Mapping)
        self.assertEqual(s.kafka.topics["odin.trades"], "trade")
        with self.assertRaises(FrozenInstanceError):
            s.limits.max_connections = 1  # type: ignore[misc]  # the point: it is frozen
        with self.assertRaises(TypeError):
            s.kafka.topics["x"] = "y"  # type: ignore[index]  # the point: it is read-only

    def test_apply_live_then_settings(self) -> None:
        """A reload's settings take live keys from the new config and keep the rest."""
        old = configmod.Config(configmod.validate({}))
        new = old.replace(limits__message_rate=1.0, shards=4)
        s, live, restart = configmod.apply_live(Settings.from_config(old),
                                                Settings.from_config(new))
        self.assertEqual((s.limits.message_rate, s.shards), (1.0, 1))
        self.assertEqual(s.config["limits.message_rate"], 1.0)
        self.assertEqual((live, restart), (["limits.message_rate"], ["shards"]))
