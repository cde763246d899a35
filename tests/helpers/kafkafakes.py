"""
Fakes for the unit tests of a shard's Kafka consumer (tests/shard/kafka):
typed settings for a consumer, the owner of its status, its consumer and
the topics' identities as recorded stand-ins, librdkafka's statistics.
"""

from __future__ import annotations

import json

from twisted.internet.task import Clock

from odin_ws.common.config import Config, validate
from odin_ws.common.settings import Settings
from odin_ws.shard.kafka.incarnations import TopicIncarnations
from tests.helpers.broker import FAST_KAFKA


def make_settings(bootstrap: str, topic: str, group: str, **overrides) -> Settings:
    values = {
        "node_id": group, "kafka.group": "test", "kafka.brokers": bootstrap,
        "kafka.topics": {topic: "trade"}, "kafka.start_offset": "earliest",
        "kafka.session_timeout_ms": FAST_KAFKA["kafka.session_timeout_ms"],
        "kafka.max_poll_interval_ms": FAST_KAFKA["kafka.max_poll_interval_ms"],
        "kafka.retry_backoff_max": 0.5,
        "kafka.consumer_config": {"statistics.interval.ms": 500,
                                  "auto.commit.interval.ms": 200,
                                  # Tansu forgets topics when restarted; see
                                  # them again without waiting 5 minutes.
                                  "topic.metadata.refresh.interval.ms": 500},
    }
    values.update(overrides)
    return Settings.from_config(Config(validate(values)))


class FakeIngest:
    """The owner's consumer-thread API, recorded."""

    rejoin_reason = "asked"

    def __init__(self):
        self.batches: list[list] = []
        self.audited: list[str] = []
        self.fatals: list[str] = []
        self.paused: list[bool] = []

    def pausing(self, paused):
        self.paused.append(paused)

    def hand_over(self, batch_id, events):
        self.batches.append(events)

    def broker_reached(self):
        pass

    def publish_assignment(self, assigned):
        pass

    def note_error(self, kind, text, level="warn"):
        raise AssertionError(text)

    def on_error(self, err):
        # What KafkaIngest.on_error does with an error that is neither fatal
        # nor a connection error.
        self.note_error(err.name().lstrip("_").lower(), err.str())

    def fatal(self, kind, text):
        self.fatals.append(text)

    def audit(self, fmt, **kw):
        self.audited.append(fmt.format(**kw))

    def log(self, level, fmt, **kw):
        pass


class FakeIncarnations(TopicIncarnations):
    """Topic identities from a dict the test changes, instead of the brokers."""

    def __init__(self, ids: dict[str, str]):
        super().__init__({})
        self.ids = ids
        self.lookups = 0

    def refresh(self, topics):
        self.lookups += 1
        return self._record({topic: self.ids.get(topic, "") for topic in topics})


class RebalanceConsumer:
    """The calls a rebalance callback makes on its Consumer, recorded."""

    def __init__(self):
        self.calls: list[tuple[str, list]] = []

    def assign(self, partitions):
        self.calls.append(("assign", [(tp.topic, tp.partition) for tp in partitions]))

    def unassign(self):
        self.calls.append(("unassign", []))

    def incremental_assign(self, partitions):
        self.calls.append(("incremental_assign", [(tp.topic, tp.partition) for tp in partitions]))

    def incremental_unassign(self, partitions):
        self.calls.append(("incremental_unassign",
                           [(tp.topic, tp.partition) for tp in partitions]))

    def seek(self, tp):
        self.calls.append(("seek", [(tp.topic, tp.partition, tp.offset)]))


class FakeConsumer:
    """consume() calls recorded; answers from a script of message lists."""

    def __init__(self, answers: list[list]):
        self.answers = answers
        self.calls: list[tuple[int, float]] = []

    def consume(self, n: int, timeout: float) -> list:
        self.calls.append((n, timeout))
        return list(self.answers.pop(0)) if self.answers else []


class ThreadlessReactor(Clock):
    """A Clock whose callFromThread runs the call at once (the test is the consumer thread)."""

    def callFromThread(self, f, *args, **kw):
        f(*args, **kw)


def stats(*brokers: dict) -> str:
    """librdkafka statistics JSON with these brokers (and no topics)."""
    return json.dumps({"brokers": {b["name"]: b for b in brokers}, "topics": {}})


def broker(name: str = "127.0.0.1:9092/1", state: str = "UP", source: str = "learned",
           rxidle_s: float = 0.01, waiting: int = 1) -> dict:
    return {"name": name, "nodename": name.split("/")[0], "state": state, "source": source,
            "rxidle": int(rxidle_s * 1e6), "waitresp_cnt": waiting}
