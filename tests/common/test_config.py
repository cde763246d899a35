"""Tests for L{odin_ws.common.config}: schema, precedence, errors and the example file."""

import os
import subprocess

from twisted.trial import unittest

from odin_ws.common import config
from odin_ws.common.launch import twistd_argv
from tests.helpers.node import ROOT


class LoadTests(unittest.TestCase):
    def write(self, text: str) -> str:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_defaults(self):
        """With no file, no environment and no flags, every setting has its schema default."""
        cfg = config.load(None, environ={})
        for opt in config.SCHEMA:
            self.assertEqual(cfg[opt.key], opt.default)

    def test_precedence(self):
        """Flags beat the environment, which beats the file, which beats defaults."""
        path = self.write("shards: 2\nkafka:\n  brokers: file:1\n  group: g\nlisten:\n  ws_path: /f\n")
        cfg = config.load(path, environ={"ODINWS_KAFKA_BROKERS": "env:2", "ODINWS_SHARDS": "3"},
                          overrides={"shards": 4})
        self.assertEqual(cfg["shards"], 4)
        self.assertEqual(cfg["kafka.brokers"], "env:2")
        self.assertEqual(cfg["kafka.group"], "g")
        self.assertEqual(cfg["listen.ws_path"], "/f")
        self.assertEqual(cfg["listen.port"], "tcp:3005:backlog=4096")

    def test_group_per_node(self):
        """The consumer group is <kafka.group>-<node_id>, the host name by default."""
        cfg = config.load(None, environ={"ODINWS_NODE_ID": "n7"})
        self.assertEqual(cfg.group_id, "odinws-n7")

    def assertConfigError(self, text: str, *fragments: str, environ=None):
        path = self.write(text)
        e = self.assertRaises(config.ConfigError, config.load, path, environ=environ or {})
        for fragment in fragments:
            self.assertIn(fragment, str(e))
        self.assertNotIn("\n", str(e))

    def test_record_must_fit_the_outbound_buffer(self):
        """
        kafka.max_record_bytes above outbound.max_buffer_bytes fails at load
        with one line naming both keys (such a record could never wait for
        a client that is behind); the defaults agree (issue 16: 1 MiB
        records against a 256 KiB buffer).
        """
        defaults = config.load(None, environ={})
        self.assertLessEqual(defaults["kafka.max_record_bytes"],
                             defaults["outbound.max_buffer_bytes"])
        e = self.assertRaises(config.ConfigError, config.load, None, environ={
            "ODINWS_KAFKA_MAX_RECORD_BYTES": "300000",
            "ODINWS_OUTBOUND_MAX_BUFFER_BYTES": "262144"})
        self.assertEqual(len(str(e).splitlines()), 1)
        self.assertIn("kafka.max_record_bytes", str(e))
        self.assertIn("outbound.max_buffer_bytes", str(e))
        config.load(None, environ={"ODINWS_KAFKA_MAX_RECORD_BYTES": "262144"})

    def test_unknown_key(self):
        """An unknown key is named, with its section."""
        self.assertConfigError("kafka:\n  brokerz: x\n", "kafka.brokerz", "unknown setting")

    def test_unknown_key_near_miss(self):
        """A misspelt key or section names the nearest real one; a far-off name suggests none."""
        self.assertConfigError("kafka:\n  brokerz: x\n", "did you mean kafka.brokers?")
        self.assertConfigError("kafak:\n  brokers: x\n", "kafak", "did you mean kafka?")
        path = self.write("zzzzzz: 1\n")
        e = self.assertRaises(config.ConfigError, config.load, path, environ={})
        self.assertNotIn("did you mean", str(e))

    def test_unknown_env(self):
        """
        An ODINWS_* variable that names no setting is refused like an unknown
        YAML key (it was ignored), with the nearest real name; other
        variables are none of odinws's business.
        """
        e = self.assertRaises(config.ConfigError, config.load, None,
                              environ={"ODINWS_KAFKA_BROKER": "k:9092"})
        self.assertEqual(str(e), "ODINWS_KAFKA_BROKER: unknown environment variable, no "
                                 "setting has this name (did you mean ODINWS_KAFKA_BROKERS?)")
        e = self.assertRaises(config.ConfigError, config.load, None,
                              environ={"ODINWS_WHATEVER_ELSE": "1"})
        self.assertIn("ODINWS_WHATEVER_ELSE: unknown environment variable", str(e))
        self.assertNotIn("did you mean", str(e))
        cfg = config.load(None, environ={"ODINWSX": "1", "HOME": "/root",
                                         "ODINWS_KAFKA_BROKERS": "k:9092"})
        self.assertEqual(cfg["kafka.brokers"], "k:9092")

    def test_test_broker_env_is_not_a_setting(self):
        """
        ODINWS_TEST_BROKER (the test suite's broker choice, inherited by the
        nodes the tests start) is not refused as a misspelt setting.
        """
        cfg = config.load(None, environ={"ODINWS_TEST_BROKER": "tansu"})
        self.assertEqual(cfg["kafka.brokers"], config.load(None, environ={})["kafka.brokers"])

    def test_wrong_type(self):
        """A value of the wrong type names the key, what was expected and what was given."""
        self.assertConfigError("shards: two\n", "shards", "expected an integer", "'two'")
        self.assertConfigError("demo:\n  enabled: 1\n", "demo.enabled", "boolean")

    def test_negative_limit(self):
        """Limits below their minimum are refused."""
        self.assertConfigError("limits:\n  max_connections: -5\n", "limits.max_connections",
                               "at least 1")

    def test_bad_choice(self):
        """Settings with a fixed set of values say which are allowed."""
        self.assertConfigError("kafka:\n  start_offset: middle\n", "kafka.start_offset",
                               "latest, earliest")

    def test_bad_mapping_values(self):
        """Topic mappings must name valid event types; policies must be known."""
        self.assertConfigError("kafka:\n  topics: {t: 'a.b'}\n", "kafka.topics.t")
        self.assertConfigError("outbound:\n  policy: {default: explode}\n", "outbound.policy.default")

    def test_bad_env(self):
        """A bad environment value is reported against its key."""
        e = self.assertRaises(config.ConfigError, config.load, None,
                              environ={"ODINWS_SHARDS": "lots"})
        self.assertIn("shards", str(e))

    def test_missing_file(self):
        """An unreadable file is one line naming the file."""
        e = self.assertRaises(config.ConfigError, config.load, "/nonexistent/odinws.yaml", environ={})
        self.assertIn("/nonexistent/odinws.yaml", str(e))

    def test_bad_yaml(self):
        """Broken YAML is reported with its line."""
        self.assertConfigError("a: [\n", "not valid YAML")

    def test_json_round_trip(self):
        """The parent hands its effective config to shards as JSON, losslessly."""
        cfg = config.load(None, environ={"ODINWS_CPU_AFFINITY": "[0, 1]"})
        self.assertEqual(dict(config.Config.from_json(cfg.to_json())), dict(cfg))

    def test_live_changes(self):
        """Reload tells live-applicable changes from those needing a restart."""
        old = config.load(None, environ={})
        new = old.replace(limits__max_subscriptions=5, shards=3)
        live, restart = config.live_changes(old, new)
        self.assertEqual(live, ["limits.max_subscriptions"])
        self.assertEqual(restart, ["shards"])


class ExampleFileTests(unittest.TestCase):
    def test_example_is_generated(self):
        """etc/odinws.yaml is exactly what the schema generates (one source of truth)."""
        with open(os.path.join(ROOT, "etc", "odinws.yaml")) as f:
            self.assertEqual(f.read(), config.example_yaml())

    def test_example_loads_to_defaults(self):
        """Loading the example file gives the defaults."""
        cfg = config.load(os.path.join(ROOT, "etc", "odinws.yaml"), environ={})
        self.assertEqual(dict(cfg), dict(config.load(None, environ={})))


class CommandLineTests(unittest.TestCase):
    def run_twistd(self, *args: str) -> subprocess.CompletedProcess:
        env = dict(os.environ, PYTHONPATH=ROOT)
        return subprocess.run(twistd_argv("--nodaemon", "--pidfile=", "odinws", *args),
                              cwd=self.mktemp_dir(), env=env,
                              capture_output=True, text=True, timeout=60)

    def mktemp_dir(self) -> str:
        path = self.mktemp()
        os.makedirs(path)
        return path

    def test_bad_config_one_line(self):
        """twistd odinws with a bad config exits non-zero with one line and no traceback."""
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write("limits:\n  max_subscriptions: -1\n")
        result = self.run_twistd("--config", path)
        self.assertNotEqual(result.returncode, 0)
        self.assertEqual(result.stderr.strip().count("\n"), 0, result.stderr)
        self.assertIn("limits.max_subscriptions", result.stderr)
        self.assertNotIn("Traceback", result.stderr + result.stdout)

    def test_unknown_env_refused_at_start(self):
        """twistd odinws with a misspelt ODINWS_* variable exits non-zero with one line naming it."""
        env = dict(os.environ, PYTHONPATH=ROOT, ODINWS_SHARD="2")
        result = subprocess.run(twistd_argv("--nodaemon", "--pidfile=", "odinws"),
                                cwd=self.mktemp_dir(), env=env,
                                capture_output=True, text=True, timeout=60)
        self.assertNotEqual(result.returncode, 0)
        self.assertEqual(result.stderr.strip().count("\n"), 0, result.stderr)
        self.assertIn("ODINWS_SHARD: unknown environment variable", result.stderr)
        self.assertIn("did you mean ODINWS_SHARDS?", result.stderr)
        self.assertNotIn("Traceback", result.stderr + result.stdout)

    def test_help_documents_options(self):
        """twistd odinws --help lists every flag with its setting."""
        result = self.run_twistd("--help")
        self.assertEqual(result.returncode, 0, result.stderr)
        for flag in ("--config", "--port", "--shards", "--kafka-brokers", "--log-format"):
            self.assertIn(flag, result.stdout)

    def test_bad_port(self):
        """An unparsable endpoint string is a one-line config error."""
        result = self.run_twistd("--port", "nonsense:1")
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("listen.port", result.stderr)
        self.assertNotIn("Traceback", result.stderr)
