"""
The librdkafka settings of a shard's group consumer (L{librdkafka_settings}),
built from the typed settings, C{kafka.consumer_config} applied last, and
what they imply: the heartbeat (L{heartbeat_interval}), whether the group
rebalances incrementally (L{incremental}); and where librdkafka's own log
lines go (L{LibrdkafkaLog}).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from odin_ws.common.settings import Settings

# librdkafka statistics (lag, broker states, a hung broker) once a second:
# parsing them costs ~0.1 ms.
STATISTICS_INTERVAL_MS = 1000
#: librdkafka's incremental (cooperative) assignor.
COOPERATIVE = "cooperative-sticky"


def librdkafka_settings(settings: Settings, instance_id: str) -> dict[str, Any]:
    """
    The consumer's librdkafka settings, C{kafka.consumer_config} applied last
    (no callbacks: the owner of the consumer's status adds its own).

    @param instance_id: the shard's static group instance id (used with
        C{kafka.static_membership}).
    """
    k = settings.kafka
    session = k.session_timeout_ms
    conf: dict[str, Any] = {
        "bootstrap.servers": k.brokers,
        "group.id": settings.group_id,
        "client.id": f"odinws-{settings.node_id}",
        # Where a partition without a usable offset starts is the consumer
        # loop's choice (kafka.start_offset, but only once the topic's
        # identity is known: ConsumerLoop.offsets_lost), not librdkafka's.
        "auto.offset.reset": "error",
        "enable.auto.commit": True,
        "enable.auto.offset.store": False,
        # librdkafka's default, stated: records of aborted transactions
        # are never delivered, nor those of open ones until they commit.
        "isolation.level": "read_committed",
        "max.poll.interval.ms": k.max_poll_interval_ms,
        "reconnect.backoff.max.ms": int(k.retry_backoff_max * 1000),
        "statistics.interval.ms": STATISTICS_INTERVAL_MS,
        "fetch.wait.max.ms": k.fetch_wait_max_ms,
        # Partitions added and topics recreated are seen at a refresh.
        "topic.metadata.refresh.interval.ms": k.metadata_refresh_ms,
    }
    if k.static_membership:
        conf["group.instance.id"] = instance_id
    if k.group_protocol == "consumer":
        # KIP-848: the broker owns the session, the heartbeat and the
        # assignor; librdkafka refuses the classic settings for them.
        conf["group.protocol"] = "consumer"
    else:
        conf["session.timeout.ms"] = session
        conf["heartbeat.interval.ms"] = heartbeat_interval(session)
        if k.cooperative_rebalance:
            # A shard's crash or restart then moves only its own partitions:
            # the others' clients see no pause (kafka.cooperative_rebalance).
            conf["partition.assignment.strategy"] = COOPERATIVE
    conf.update(k.consumer_config)
    return conf


def heartbeat_interval(session_ms: int) -> int:
    """
    librdkafka's heartbeat.interval.ms for a session of C{session_ms}: a
    twentieth of it, 100 ms to 1 s.

    librdkafka times the session on its own side too, from the last answered
    heartbeat: a broker that answers nothing for P seconds (a pause, a GC
    stall, SIGSTOP) makes the member give up its partitions and rejoin
    (C{SESSTMOUT}) once P plus the age of that answer passes the session. At
    a third of the session (the interval before), a pause of two thirds of
    it could do that: measured on Apache Kafka 4.4, 10 s session, an 8 s
    SIGSTOP of the broker, both shards gave up their partitions as it came
    back; without static membership they rejoined as new members and the
    broker held the join for the old members, so nothing was read for a
    further 10 s (18 s in all). At a twentieth (0.5 s) the same pause, and a
    9 s one, passed with every partition kept, events flowing 0.02-0.06 s
    after the broker came back. Two heartbeats a second per shard are
    nothing to a broker.
    """
    return max(100, min(1000, session_ms // 20))


def incremental(conf: dict[str, Any]) -> bool:
    """
    Whether librdkafka rebalances incrementally with these settings (the
    rebalance callbacks must answer accordingly:
    L{odin_ws.shard.kafka.membership.GroupMembership}).
    """
    return (conf.get("group.protocol") == "consumer"
            or conf.get("partition.assignment.strategy") == COOPERATIVE)


class LibrdkafkaLog:
    """
    librdkafka's own log lines: warnings once per facility and episode. Its
    error lines are dropped: the same errors reach error_cb.

    @param log_once: logs a line once per key and episode (the consumer
        status owner's C{log_once}).
    """

    def __init__(self, log_once: Callable[..., None]):
        self._log_once = log_once

    def log(self, level: int, fmt: str, *args: Any) -> None:
        if level != 30:  # confluent-kafka maps librdkafka levels to logging's
            return
        facility = args[0] if args else "?"
        self._log_once(f"librdkafka:{facility}", "librdkafka: {line}", line=fmt % args)
