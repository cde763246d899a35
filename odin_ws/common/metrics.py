"""
Prometheus metrics of one process (the parent or a shard), all prefixed
C{odinws_}, in a registry of their own so tests can read them.

Hot paths (per delivered frame) never touch these objects: they bump plain
integers (see L{odin_ws.shard.writer.WriteStats}) that a collector reads at scrape
time. Per-event and per-connection code may use the objects directly.
"""

from __future__ import annotations

import enum
import gc
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import Metric

import odin_ws

# Every counter and histogram would carry a C{_created} series (its creation
# time, which no rule or dashboard here reads): off, in both processes.
disable_created_metrics()

REGISTRY = CollectorRegistry(auto_describe=True)

BUILD = Info("odinws_build", "Build information.", registry=REGISTRY)
BUILD.info({"version": odin_ws.__version__})

# Connections (shard).
CONNECTIONS = Gauge("odinws_connections", "Open WebSocket connections.", registry=REGISTRY)
CONNECTIONS_OPENED = Counter("odinws_connections_opened", "WebSocket connections opened.",
                             registry=REGISTRY)
PING_TIMEOUTS = Counter("odinws_ping_timeouts", "WebSocket connections dropped for answering "
                        "no keepalive ping within keepalive.ping_timeout (also counted in "
                        "odinws_connections_closed, code 1006).", registry=REGISTRY)
CONNECTIONS_CLOSED = Counter("odinws_connections_closed",
                             "WebSocket connections closed, by reason and close code.",
                             ["reason", "code"], registry=REGISTRY)
#: The close codes counted under their own label: those of RFC 6455 a
#: connection can end with, and the application codes of docs/protocol.md.
#: A client picks its own close code (3000-4999 are free for applications),
#: so every other code is counted per range (other_3xxx, other_4xxx,
#: other): a fixed set of label values, not a series per code a client
#: cares to send (issue 16).
CLOSE_CODES = frozenset((1000, 1001, 1002, 1003, 1005, 1006, 1007, 1008, 1009, 1010, 1011,
                         1012, 1013, 1014, 1015, 4000, 4001, 4008))
CLOSE_CODE_LABELS = frozenset(
    {str(c) for c in CLOSE_CODES} | {"other_3xxx", "other_4xxx", "other", "none"})


def close_code_label(code: int | None) -> str:
    """The C{code} label of L{CONNECTIONS_CLOSED} for a close code (one of L{CLOSE_CODE_LABELS})."""
    if code in CLOSE_CODES:
        return str(code)
    if code is None:
        return "none"
    if 3000 <= code <= 3999:
        return "other_3xxx"
    if 4000 <= code <= 4999:
        return "other_4xxx"
    return "other"


SUBSCRIPTIONS = Gauge("odinws_subscriptions", "Subscriptions held by connections.",
                      registry=REGISTRY)
#: outbound.native: the fan-out's send loop (odin_ws/shard/delivery/nativesend.py).
OUTBOUND_NATIVE = Gauge("odinws_outbound_native", "1 when the shard's fan-out sends with its "
                        "native (C) loop, 0 when with the pure-Python one (outbound.native).",
                        registry=REGISTRY)
CLIENT_ERRORS = Counter("odinws_client_errors", "Error messages sent to clients, by code.",
                        ["code"], registry=REGISTRY)
HANDSHAKE_SECONDS = Histogram("odinws_handshake_seconds",
                              "Socket adoption to WebSocket open, seconds.",
                              buckets=(.0005, .001, .0025, .005, .01, .025, .05, .1, .25, 1, 5),
                              registry=REGISTRY)

# JWT keys from auth.jwks_url (shard: each shard fetches them).
JWKS_FETCHES = Counter("odinws_jwks_fetches", "Fetches of auth.jwks_url, by result: ok, or "
                       "failed (unreachable, timeout, TLS, HTTP status, not a usable JWKS; "
                       "the keys fetched before keep working).", ["result"], registry=REGISTRY)
for _result in ("ok", "failed"):
    JWKS_FETCHES.labels(result=_result)  # exported at 0, so increase() sees the first
JWKS_KEYS = Gauge("odinws_jwks_keys", "Signing keys known from auth.jwks_url.",
                  registry=REGISTRY)

# Kafka (shard).
KAFKA_RECORDS = Counter("odinws_kafka_records", "Records consumed, by topic.", ["topic"],
                        registry=REGISTRY)
KAFKA_REJECTED = Counter("odinws_kafka_rejected", "Records skipped, by reason.", ["reason"],
                         registry=REGISTRY)
KAFKA_UNTOLD = Counter("odinws_kafka_untold", "Records given up on whose channel is in their "
                       "value (token id or event type from a field): no subscriber can be "
                       "told of them (docs/protocol.md, undecodable), by reason.", ["reason"],
                       registry=REGISTRY)
SCHEMA_FETCHES = Counter("odinws_schema_registry_fetches", "Schema fetches from the Schema "
                         "Registry, by outcome (ok, unknown_schema, registry_unavailable, "
                         "schema_references).",
                         ["outcome"], registry=REGISTRY)
SCHEMAS_CACHED = Gauge("odinws_schemas_cached", "Schemas this shard holds from the Schema "
                       "Registry.", registry=REGISTRY)
KAFKA_LAG = Gauge("odinws_kafka_consumer_lag", "Consumer lag, records, per partition.",
                  ["topic", "partition"], registry=REGISTRY)
KAFKA_CONNECTED = Gauge("odinws_kafka_connected", "1 when the consumer reaches a broker.",
                        registry=REGISTRY)
KAFKA_ERRORS = Counter("odinws_kafka_errors", "Consumer errors, by kind.", ["kind"],
                       registry=REGISTRY)
KAFKA_REPLACEMENTS = Counter("odinws_kafka_consumer_replacements",
                             "Kafka consumers replaced after librdkafka declared them fatally "
                             "failed (e.g. fenced).", registry=REGISTRY)
KAFKA_STALLED = Gauge("odinws_kafka_partitions_stalled",
                      "Partitions this shard holds that have records to read and whose "
                      "position has not moved for kafka.progress_grace "
                      "(shard/kafka/progress.py).", registry=REGISTRY)
KAFKA_REJOINS = Counter("odinws_kafka_group_rejoins",
                        "Times a shard left its consumer group and joined again because the "
                        "parent found partitions that no shard of the node held "
                        "(parent/coverage.py) or a partition it held stalled "
                        "(shard/kafka/progress.py).", registry=REGISTRY)
KAFKA_ASSIGNMENTS_LOST = Counter("odinws_kafka_assignments_lost",
                                 "Times a shard's consumer lost its partitions without a "
                                 "rebalance handing them over: its group session timed out "
                                 "(a broker pause or outage longer than the session) or the "
                                 "group evicted it.", registry=REGISTRY)
KAFKA_BATCHES_JOINED = Counter("odinws_kafka_batches_joined",
                               "Consumed batches that waited behind a busy shard and went "
                               "out in one delivery with the batch before them "
                               "(shard/kafka/handover.py): rising, the shard is behind its "
                               "consumer and coalescing.", registry=REGISTRY)
DELIVERY_LATENCY = Histogram("odinws_delivery_latency_seconds",
                             "Kafka record timestamp to first write, seconds.",
                             buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 10),
                             registry=REGISTRY)
EVENTS_DUPLICATE = Counter("odinws_events_duplicate", "Events dropped as already seen "
                           "(rebalance or shard restart re-reads).", registry=REGISTRY)

# Hub and dispatcher (parent).
HUB_RELAYED = Counter("odinws_hub_relayed_events", "Events relayed to other shards.",
                      registry=REGISTRY)
HUB_DROPPED = Counter("odinws_hub_dropped_batches", "Batches dropped for a slow or dead shard.",
                      ["shard"], registry=REGISTRY)
HUB_REJECTED = Counter("odinws_hub_rejected_events", "Events not relayed, by reason.",
                       ["reason"], registry=REGISTRY)
HUB_QUEUE = Gauge("odinws_hub_queue_batches", "Batches waiting in the hub per shard.",
                  ["shard"], registry=REGISTRY)
DISPATCHED = Counter("odinws_dispatch_total", "Connections handed to each shard.",
                     ["shard"], registry=REGISTRY)
REJECTED = Counter("odinws_rejected_connections", "Connections refused before the "
                   "upgrade, by HTTP status and reason.", ["status", "reason"],
                   registry=REGISTRY)
HANDOFF_SECONDS = Histogram("odinws_handoff_seconds", "Handoff round trip to a shard, seconds.",
                            buckets=(.0002, .0005, .001, .0025, .005, .01, .025, .1, 1),
                            registry=REGISTRY)
HANDOFFS_ABANDONED = Counter("odinws_handoffs_abandoned", "Clients the parent let go of "
                             "without an answer because their shard may hold the socket, by "
                             "reason: timeout (no answer within listen.handoff_timeout), lost "
                             "(the control channel failed after sending).", ["reason"],
                             registry=REGISTRY)
for _reason in ("timeout", "lost"):
    HANDOFFS_ABANDONED.labels(reason=_reason)  # exported at 0, so increase() sees the first
HANDOFF_WAITING = Gauge("odinws_handoff_waiting", "Upgrades waiting for a handoff slot "
                        "(every shard with room had supervisor.max_handoffs_in_flight "
                        "handoffs unanswered).", registry=REGISTRY)
HANDOFF_WAIT_SECONDS = Histogram("odinws_handoff_wait_seconds", "Time an upgrade waited for a "
                                 "handoff slot, until it was handed over (or refused for "
                                 "another reason), seconds; upgrades that did not wait are "
                                 "not observed.",
                                 buckets=(.001, .005, .025, .1, .25, .5, 1, 2.5, 5, 10, 30),
                                 registry=REGISTRY)
ACCEPT_PAUSED = Gauge("odinws_accept_paused", "Listeners not accepting now because the "
                      "parent holds listen.max_heads connections before their upgrade (new ones "
                      "wait in the kernel's listen backlog).", registry=REGISTRY)
ACCEPT_PAUSES = Counter("odinws_accept_pauses", "Times a listener stopped accepting at "
                        "listen.max_heads.", registry=REGISTRY)
HANDOFF_WAIT_TIMEOUTS = Counter("odinws_handoff_wait_timeouts", "Upgrades whose "
                                "listen.head_timeout passed while they waited for a handoff "
                                "slot (answered 503 wait_timeout).", registry=REGISTRY)
GUARD_CPU = Gauge("odinws_guard_cpu_ratio", "Node CPU use as a ratio of its budget (0-1).",
                  registry=REGISTRY)
GUARD_MEMORY = Gauge("odinws_guard_memory_ratio", "Node memory use as a ratio of its "
                     "budget (0-1).", registry=REGISTRY)
GUARD_ACCEPTING = Gauge("odinws_guard_accepting", "1 while the resource guard lets new "
                        "connections in.", registry=REGISTRY)
READY = Gauge("odinws_ready", "1 while the node accepts new connections (/health is 200).",
              registry=REGISTRY)
SHARD_RESTARTS = Counter("odinws_shard_restarts", "Shard processes restarted.", ["shard"],
                         registry=REGISTRY)


# Kafka incarnations and latency shares (shard; the hub counts resets too).
OFFSET_RESETS = Counter("odinws_offset_resets", "De-duplication marks reset because a "
                        "partition's log is new (topic recreated, broker replaced, other "
                        "cluster), by reason.", ["reason"], registry=REGISTRY)
KAFKA_REWINDS = Counter("odinws_kafka_offset_rewinds", "Partitions whose offsets went back "
                        "while assigned (the broker's log was reset under the consumer).",
                        registry=REGISTRY)
OFFSET_RESETS.labels(reason="topic_changed")  # exported at 0, so increase() sees the first
# Delivery latency split: odinws_delivery_latency_seconds (end to end) =
# broker's share (record timestamp to consumed) + odinws's own share.
# Fine enough below 250 ms to tell 5 ms from 20 (a fan-out to thousands of
# sockets takes tens of milliseconds on one core).
_LATENCY_BUCKETS = (.0005, .001, .002, .003, .005, .0075, .01, .015, .02, .03, .05, .075, .1,
                    .15, .2, .3, .5, .75, 1, 2.5, 10)
BROKER_LATENCY = Histogram("odinws_broker_latency_seconds",
                           "Kafka record timestamp to consumed by a shard, seconds: the "
                           "producer's and broker's share of the delivery latency.",
                           buckets=_LATENCY_BUCKETS, registry=REGISTRY)
OWN_LATENCY = Histogram("odinws_own_latency_seconds",
                        "Consumed from Kafka to handed to the last subscriber's socket, "
                        "seconds: odinws's own share of the delivery latency; path=relayed "
                        "for events another shard consumed (consumer shard, hub, this shard).",
                        ["path"], buckets=_LATENCY_BUCKETS, registry=REGISTRY)
OWN_LATENCY_LOCAL = OWN_LATENCY.labels(path="local")
OWN_LATENCY_RELAYED = OWN_LATENCY.labels(path="relayed")
# The process stops while Python's cyclic collector runs; a full collection
# (generation 2) walks every tracked object, so its pause grows with the
# connections a shard holds (docs/operations.md, "Latency").
GC_PAUSE = Histogram("odinws_gc_pause_seconds", "Pauses of Python's cyclic garbage "
                     "collector (nothing else runs meanwhile), seconds, by the oldest "
                     "generation collected (2 = a full collection).", ["generation"],
                     buckets=(.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1,
                              .25, .5, 1), registry=REGISTRY)


class GcPauses:
    """A C{gc.callbacks} entry that times every collection into L{GC_PAUSE}."""

    def __init__(self) -> None:
        self._started = 0.0
        self._observe = [GC_PAUSE.labels(generation=str(g)).observe for g in range(3)]

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self._observe[info["generation"]](time.perf_counter() - self._started)

    def watch(self) -> None:
        """Time collections from now on (once, however often called)."""
        if self not in gc.callbacks:
            gc.callbacks.append(self)

    def unwatch(self) -> None:
        if self in gc.callbacks:
            gc.callbacks.remove(self)


GC_PAUSES = GcPauses()

# Recovery and snapshots (shard). History sizes are read at scrape time by
# odin_ws.shard.history.store.HistoryCollector.
RECOVERIES = Counter("odinws_recoveries", "Subscribes that asked for recovery, by result: "
                     "recovered, or the reason it was not (too_old, not_loaded, ahead, "
                     "other_epoch, unknown_partition, too_large).", ["result"],
                     registry=REGISTRY)
for _result in ("recovered", "too_old", "not_loaded", "ahead", "other_epoch",
                "unknown_partition", "too_large"):
    RECOVERIES.labels(result=_result)  # exported at 0
RECOVERIES_HELD = Counter("odinws_recoveries_held", "Recoveries held until the shard had "
                          "loaded or caught up on their partitions (history.recovery_hold), "
                          "by outcome: answered (it had, in time), timed_out (answered as "
                          "things stood), gone (the client left first).", ["outcome"],
                          registry=REGISTRY)
for _outcome in ("answered", "timed_out", "gone"):
    RECOVERIES_HELD.labels(outcome=_outcome)  # exported at 0
RECOVERIES_WAITING = Gauge("odinws_recoveries_waiting", "Recoveries held right now.",
                           registry=REGISTRY)
RECOVERY_HOLD_SECONDS = Histogram("odinws_recovery_hold_seconds", "How long held recoveries "
                                  "waited, seconds.", buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5,
                                                               5, 10, 15, 30, 60),
                                  registry=REGISTRY)
EVENTS_STALE = Counter("odinws_events_stale", "Events older than outbound.max_event_age, "
                       "not delivered live (kept for recovery and snapshots).",
                       registry=REGISTRY)
EVENTS_REPLAYED = Counter("odinws_events_replayed", "Events sent again by recoveries.",
                          registry=REGISTRY)
SNAPSHOT_EVENTS = Counter("odinws_snapshot_events", "Events sent as snapshots on subscribe.",
                          registry=REGISTRY)
DELTA_BYTES = Counter("odinws_delta_bytes", "Bytes of event frames to subscriptions that "
                      "asked for deltas: stage=before, had every event gone whole; stage=after, "
                      "as sent (deltas where they could be).", ["stage"], registry=REGISTRY)
DELTA_FRAMES = Counter("odinws_delta_frames", "Event frames to subscriptions that asked for "
                       "deltas, by kind: delta, or whole (first event, after a gap, or no "
                       "patch possible).", ["kind"], registry=REGISTRY)
EVENTS_THROTTLED = Counter("odinws_events_throttled", "Events a max_rate stream skipped for a "
                           "newer one (counted once per channel and rate, not per connection).",
                           registry=REGISTRY)
EVENTS_FILTERED = Counter("odinws_events_filtered", "Events a subscription filter kept from its "
                          "subscribers (counted once per event and distinct filter).",
                          registry=REGISTRY)
HISTORY_WARMED = Counter("odinws_history_warmed_events", "Events a starting shard read "
                         "back from Kafka into its history and snapshot cache (warm-up).",
                         registry=REGISTRY)
LATE_WARMUPS = Counter("odinws_history_late_warmups", "Warm-ups of partitions first assigned "
                       "after the start's, ended, by result: done, incomplete (time ran out), "
                       "failed, stopped.", ["result"], registry=REGISTRY)
LATE_WARMUP_PARTITIONS = Gauge("odinws_history_late_warmup_partitions", "Partitions first "
                               "assigned after the start's warm-up that wait for or are in "
                               "their own now: their events wait at the warm gate.",
                               registry=REGISTRY)
LATE_WARMUP_SECONDS = Gauge("odinws_history_late_warmup_seconds", "How long the late warm-up "
                            "has been reading, or partitions first assigned after the start "
                            "have waited for one, whichever is longer (0: none): past twice "
                            "history.warmup_timeout it is overdue (/health warmup_overdue).",
                            registry=REGISTRY)


# The standard process metrics every Prometheus client exports
# (process_cpu_seconds_total, process_resident_memory_bytes,
# process_virtual_memory_bytes, process_start_time_seconds, process_open_fds,
# process_max_fds), read from /proc at scrape time: one set per process, the
# shards' labelled shard="<i>" by the parent's merge.
PROCESS = ProcessCollector(registry=REGISTRY)


class DeprecatedAliases:
    """
    Old names of renamed metrics, exported beside the new ones for one more
    release so dashboards and alert rules written against them keep working
    while they are moved (docs/operations.md, "Renamed metrics"). Values are
    the new families' own samples, renamed: nothing is measured twice.

    @param renamed: the old family name of each new one (as
        C{MetricFamily.name}: without C{_total}).
    @param sources: the collectors (or metrics) the new families come from.
    """

    def __init__(self, renamed: dict[str, str], *sources: Any):
        self._renamed = renamed
        self._sources = sources

    def collect(self) -> Iterator[Metric]:
        for source in self._sources:
            for family in source.collect():
                old = self._renamed.get(family.name)
                if old is None:
                    continue
                alias = Metric(old, f"Deprecated: renamed {family.name}, this name goes in "
                               f"the next release. {family.documentation}", family.type)
                for sample in family.samples:
                    alias.add_sample(old + sample.name[len(family.name):], sample.labels,
                                     sample.value, sample.timestamp)
                yield alias


#: Old name -> new name of every renamed metric. The old names stay for the
#: next release (the first with the new ones) and go in the one after.
RENAMED = {
    "odinws_process_cpu_seconds": "process_cpu_seconds",
    "odinws_process_resident_bytes": "process_resident_memory_bytes",
    "odinws_process_start_time_seconds": "process_start_time_seconds",
    "odinws_guard_cpu_fraction": "odinws_guard_cpu_ratio",
    "odinws_guard_memory_fraction": "odinws_guard_memory_ratio",
}
REGISTRY.register(DeprecatedAliases({new: old for old, new in RENAMED.items()},
                                    PROCESS, GUARD_CPU, GUARD_MEMORY))


def _families(*collectors: Any) -> frozenset[str]:
    return frozenset(family.name for c in collectors for family in c.describe())


#: Families only the parent sets: the node's door, hub and shard processes.
#: A shard's copy would only ever read 0 (C{odinws_ready{shard="0"} 0} on a
#: ready node), so a shard leaves them out.
_PARENT_ONLY = _families(READY, GUARD_CPU, GUARD_MEMORY, GUARD_ACCEPTING, HUB_RELAYED,
                         HUB_DROPPED, HUB_REJECTED, HUB_QUEUE, DISPATCHED, HANDOFF_SECONDS,
                         HANDOFFS_ABANDONED, HANDOFF_WAITING, HANDOFF_WAIT_SECONDS,
                         HANDOFF_WAIT_TIMEOUTS, ACCEPT_PAUSED, ACCEPT_PAUSES,
                         SHARD_RESTARTS)
PARENT_FAMILIES = _PARENT_ONLY | {old for old, new in RENAMED.items() if new in _PARENT_ONLY}
#: Families only shards set (connections, Kafka, delivery, history): the
#: parent leaves them out, rather than show an unlabelled
#: C{odinws_kafka_connected 0} beside every shard's 1. (The rest, such as
#: C{odinws_rejected_connections}, the de-duplication counters and the process
#: series, are set by both.)
SHARD_FAMILIES = _families(CONNECTIONS, CONNECTIONS_OPENED, CONNECTIONS_CLOSED, PING_TIMEOUTS,
                           SUBSCRIPTIONS,
                           CLIENT_ERRORS, HANDSHAKE_SECONDS, KAFKA_RECORDS, KAFKA_REJECTED,
                           KAFKA_UNTOLD, SCHEMA_FETCHES, SCHEMAS_CACHED,
                           KAFKA_LAG, KAFKA_CONNECTED, KAFKA_ERRORS, KAFKA_REPLACEMENTS,
                           KAFKA_REJOINS, KAFKA_STALLED, KAFKA_ASSIGNMENTS_LOST,
                           DELIVERY_LATENCY,
                           KAFKA_REWINDS, BROKER_LATENCY, OWN_LATENCY,
                           GC_PAUSE, RECOVERIES, RECOVERIES_HELD, RECOVERIES_WAITING,
                           RECOVERY_HOLD_SECONDS, EVENTS_STALE, EVENTS_REPLAYED,
                           SNAPSHOT_EVENTS, HISTORY_WARMED, LATE_WARMUPS,
                           LATE_WARMUP_PARTITIONS, LATE_WARMUP_SECONDS, DELTA_BYTES, DELTA_FRAMES,
                           EVENTS_THROTTLED, EVENTS_FILTERED, KAFKA_BATCHES_JOINED,
                           JWKS_FETCHES, JWKS_KEYS, OUTBOUND_NATIVE)


class Process(enum.Enum):
    """Which kind of process an exposition is for (what it leaves out)."""

    PARENT = SHARD_FAMILIES
    SHARD = PARENT_FAMILIES


class _Without:
    """A view of a registry without some families (for C{generate_latest})."""

    def __init__(self, registry: CollectorRegistry, left_out: frozenset[str]):
        self._registry = registry
        self._left_out = left_out

    def collect(self) -> Iterator[Any]:
        return (f for f in self._registry.collect() if f.name not in self._left_out)


def exposition(process: Process) -> bytes:
    """This process's metrics in the Prometheus text format, without the other kind's."""
    return generate_latest(_Without(REGISTRY, process.value))
