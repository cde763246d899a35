"""
Which incarnation of each topic the consumer reads: the epoch tag
(L{odin_ws.shard.history.positions.epoch_of}) of the cluster id and the topic id,
asked of the brokers with an C{AdminClient} (DescribeCluster and
DescribeTopics; a plain consumer does not expose topic ids).

Measured against tansu 0.6.0: the cluster id is always C{tansu_cluster}
(it does not tell a replaced broker), but a recreated topic (or the same
topic on a new in-memory broker) gets a new topic id. With Apache Kafka
both identify (topic ids since 2.8, KIP-516).

Used from the consumer thread only; every call is bounded by C{timeout}.

Both requests go to what the admin client's last metadata named the
controller. A KRaft broker names a random live broker there, and librdkafka
(2.16) waits for that broker for as long as its metadata is not refreshed
(5 minutes for an admin client): measured on a three-broker Apache Kafka
4.4, with the named broker killed every lookup timed out ("Timed out
waiting for controller") for the 40 s tried, and the shards whose group
had lost its offsets in the same outage started none of those partitions
again (C{LeaderKilledTests}: 2 runs in 19 stalled for good). So a failed lookup refreshes the
metadata (L{TopicIncarnations.renew}): the next one asks a broker that is
there (once the cluster has fenced the dead one, always).
"""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import wait
from typing import Any

from confluent_kafka import KafkaException, TopicCollection
from confluent_kafka.admin import AdminClient

from odin_ws.shard.history.positions import epoch_of

#: librdkafka properties an admin client shares with the consumer: where
#: the brokers are and how to reach them (security included); consumer-only
#: properties would make librdkafka warn.
_SHARED = ("bootstrap.servers", "client.id", "security.protocol", "sasl.", "ssl.",
           "socket.", "broker.", "reconnect.", "retry.", "api.version.",
           "client.dns.lookup", "connections.max.idle.ms", "metadata.", "logger")


def admin_config(consumer_config: dict[str, Any]) -> dict[str, Any]:
    """
    The admin client's settings: the connection part of the consumer's, and
    no topic auto-creation. An admin client is a producer-type handle in
    librdkafka, whose default lets a metadata lookup of one named topic
    (L{odin_ws.shard.kafka.topiclayout}) create it on brokers that allow
    it (Kafka's default): a deleted topic, or one on a replaced broker,
    came back with the broker's default partition count before its owner
    could create it.
    """
    config = {k: v for k, v in consumer_config.items()
              if k in _SHARED or k.startswith(tuple(p for p in _SHARED if p.endswith(".")))}
    config["allow.auto.create.topics"] = False
    return config


#: Seconds a metadata refresh after a failed lookup may take.
RENEW_TIMEOUT = 1.0


class TopicIncarnations:
    """
    The current epoch of each topic.

    @param config: librdkafka settings for the admin client (L{admin_config}).
    @param timeout: seconds one lookup may take.
    @param admin_factory: builds the admin client from C{config}.
    """

    def __init__(self, config: dict[str, Any], timeout: float = 2.0,
                 admin_factory: Any = AdminClient):
        self._config = config
        self._timeout = timeout
        self._admin_factory = admin_factory
        self._admin: Any = None
        self._epochs: dict[str, str] = {}
        self._rewinds = 0
        #: Topics a lookup found changed identity since this tracker started
        #: (recreated, the broker replaced): a partition of one without a
        #: usable offset was never read by the group in its new incarnation,
        #: whenever it is assigned, so all of its log is new. Kept here, with
        #: the epochs, so that every consumer a shard runs in turn knows it.
        self.renewed: set[str] = set()
        #: Why the last lookup failed (None: it succeeded).
        self.failure: Exception | None = None

    def epoch(self, topic: str) -> str:
        """The last known epoch of C{topic} (C{""} before any lookup succeeded)."""
        return self._epochs.get(topic, "")

    def refresh(self, topics: Iterable[str]) -> dict[str, str] | None:
        """
        Ask the brokers for the identity of C{topics}. Returns the topics
        whose epoch changed (topic -> old epoch, C{""} if unknown before), or
        None if the brokers did not answer in time (the old epochs stay).
        """
        topics = sorted(set(topics))
        if not topics:
            return {}
        try:
            if self._admin is None:
                self._admin = self._admin_factory(self._config)
            cluster = self._admin.describe_cluster(request_timeout=self._timeout)
            described = self._admin.describe_topics(TopicCollection(topics),
                                                    request_timeout=self._timeout)
            futures = [cluster, *described.values()]
            wait(futures, timeout=self._timeout + 1.0)
            cluster_id = cluster.result(timeout=0).cluster_id or ""
            ids = {}
            for topic, future in described.items():
                topic_id = future.result(timeout=0).topic_id
                ids[topic] = str(topic_id) if topic_id is not None else ""
        except (KafkaException, TimeoutError, ValueError, TypeError, RuntimeError) as e:
            # Not reachable now, unknown topic, or a broker without these
            # requests: keep what is known, the caller retries later.
            self.failure = e
            self.renew()
            return None
        self.failure = None
        return self._record({topic: epoch_of(cluster_id, topic_id)
                             for topic, topic_id in ids.items()})

    def _record(self, epochs: dict[str, str]) -> dict[str, str]:
        """Take C{epochs} (topic -> epoch now); the topics changed, as L{refresh} returns them."""
        changed = {}
        for topic, epoch in epochs.items():
            old = self._epochs.get(topic, "")
            if epoch != old:
                changed[topic] = old
                self._epochs[topic] = epoch
                if old:
                    self.renewed.add(topic)
        return changed

    def renew(self) -> None:
        """
        Refresh the admin client's metadata (a request to any broker that
        answers), and with it the broker it takes for the controller.
        Bounded by L{RENEW_TIMEOUT} (the consumer thread waits meanwhile; a
        broker that is up answers in milliseconds); a failure is the next
        lookup's to report.
        """
        if self._admin is None:
            return
        try:
            self._admin.list_topics(timeout=RENEW_TIMEOUT)
        except KafkaException:
            pass

    def rewind(self, topic: str) -> None:
        """
        Give C{topic} a new epoch without asking the brokers: its log went
        back in place (same identity, or none known).
        """
        self._rewinds += 1
        self._epochs[topic] = epoch_of(self._epochs.get(topic, ""), topic, "rewind",
                                       str(self._rewinds))
