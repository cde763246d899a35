"""
The text of a confluent-kafka error, as the shard's logs and C{/health}
show it: one rule for every Kafka client of a shard (the group consumer,
the warm-up's reader, the admin lookups).
"""

from __future__ import annotations

from confluent_kafka import KafkaError


def describe_error(e: BaseException) -> str:
    """The text of a confluent-kafka exception (its KafkaError's, when it has one)."""
    if e.args and isinstance(e.args[0], KafkaError):
        return e.args[0].str()
    return str(e)
