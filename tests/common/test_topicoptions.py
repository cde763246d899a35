"""Tests for L{odin_ws.common.topicoptions} and its check at load time."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from odin_ws.common import config, topicoptions
from odin_ws.common.topicoptions import Origin, Source, ValueFormat

TOPICS = {"odin.trades": "trade", "odin.prices": "price"}


class TopicOptionsTests(SynchronousTestCase):

    def test_defaults_follow_the_global_fields(self) -> None:
        """
        A topic without an entry reads JSON, its token from the key (or
        kafka.token_field) and its event type from the topic (or
        kafka.event_type_field), as before per-topic options existed.
        """
        plain = topicoptions.for_topics(TOPICS, {}, "", "")["odin.trades"]
        self.assertEqual((plain.format, plain.token, plain.event_type),
                         (ValueFormat.JSON, Source(Origin.KEY), Source(Origin.TOPIC)))
        fields = topicoptions.for_topics(TOPICS, {}, "tok", "kind")["odin.prices"]
        self.assertEqual((str(fields.token), str(fields.event_type)), ("field:tok", "field:kind"))

    def test_entry_overrides(self) -> None:
        """An entry sets the format and the sources of its own topic only."""
        options = topicoptions.for_topics(
            TOPICS, {"odin.trades": {"format": "avro", "token": "header:token_id",
                                     "event_type": "field:kind"}}, "", "")
        trades = options["odin.trades"]
        self.assertEqual((trades.format, str(trades.token), str(trades.event_type)),
                         (ValueFormat.AVRO, "header:token_id", "field:kind"))
        self.assertTrue(trades.needs_registry)
        self.assertFalse(options["odin.prices"].needs_registry)

    def test_mistakes_name_the_key(self) -> None:
        """Each mistake is one line naming the topic and the key."""
        cases = {
            "odin.other: not one of kafka.topics": {"odin.other": {}},
            "odin.trades.format: must be one of json, avro, protobuf, jsonschema, auto, "
            "got 'xml'": {"odin.trades": {"format": "xml"}},
            "odin.trades.token: must be one of key, header:NAME, field:NAME, got 'topic'":
                {"odin.trades": {"token": "topic"}},
            "odin.trades.event_type: must be one of topic, header:NAME, field:NAME, got 'key'":
                {"odin.trades": {"event_type": "key"}},
            "odin.trades.token: header: needs a name (header:NAME), got 'header:'":
                {"odin.trades": {"token": "header:"}},
            "odin.trades.token: key takes no name, got 'key:x'": {"odin.trades": {"token": "key:x"}},
            "odin.trades.colour: unknown (known: format, token, event_type)":
                {"odin.trades": {"colour": "red"}},
            "odin.trades: expected a mapping of format, token, event_type, got 'avro'":
                {"odin.trades": "avro"},
        }
        for message, entry in cases.items():
            with self.assertRaises(ValueError) as e:
                topicoptions.for_topics(TOPICS, entry, "", "")
            self.assertEqual(str(e.exception), message)

    def test_loader_checks_them(self) -> None:
        """
        The configuration loader refuses a bad entry, and a registry format
        without schema_registry.url, naming the key.
        """
        with self.assertRaises(config.ConfigError) as e:
            config.validate({"kafka.topics": TOPICS,
                             "kafka.topic_options": {"odin.trades": {"format": "yaml"}}})
        self.assertIn("kafka.topic_options.odin.trades.format:", str(e.exception))
        with self.assertRaises(config.ConfigError) as e:
            config.validate({"kafka.topics": TOPICS,
                             "kafka.topic_options": {"odin.trades": {"format": "protobuf"}}})
        self.assertEqual(str(e.exception), "schema_registry.url: needed by "
                         "kafka.topic_options.odin.trades (format protobuf)")
        values = config.validate({"kafka.topics": TOPICS, "schema_registry.url": "http://r:8081",
                                  "kafka.topic_options": {"odin.trades": {"format": "auto"}}})
        self.assertEqual(values["kafka.topic_options"], {"odin.trades": {"format": "auto"}})
