"""
Every setting of odinws, defined once: its type, default, help text and
the rest of its schema (minimum, choices, live reload, command-line flag)
are one field of the frozen dataclass of its section, as Centrifugo's
config structs carry default, doc and environment name in their tags.

From these definitions L{odin_ws.common.config} derives the schema the
loader validates against (C{config.SCHEMA}), the environment variable of
each key (C{kafka.brokers} -> C{ODINWS_KAFKA_BROKERS}), C{twistd odinws
--help} and the example file etc/odinws.yaml (a section's docstring is its
heading there). To add a setting, add a field here with L{setting}.

A component takes the section it needs (C{settings.limits.max_connections},
not C{config["limits.max_connections"]}); L{Settings} is built once, at
the edge (the plugin glue, a reload), and handed down.

No C{from __future__ import annotations} here: the schema reads each
field's type (C{int}, C{tuple[str, ...]}, ...) as an object.
"""

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields, is_dataclass
from types import MappingProxyType
from typing import Any, Protocol


@dataclass(frozen=True)
class Spec:
    """What the schema knows of one setting besides its name and type."""

    default: Any
    help: str
    minimum: float | None = None
    #: The values allowed: of the setting, of each item of a list, of each
    #: value of a mapping.
    choices: tuple[str, ...] | None = None
    #: May change on SIGHUP without a restart.
    live: bool = False
    #: Also settable with a command-line flag of this name.
    flag: str | None = None
    #: Shown commented-out in the example file (the value depends on the host).
    example_only: bool = False


def setting(default: Any, help: str, *, minimum: float | None = None,
            choices: tuple[str, ...] | None = None, live: bool = False,
            flag: str | None = None, example_only: bool = False) -> Any:
    """
    A setting's field. The C{default} is the value as the YAML file would
    give it (lists and mappings as such); the field itself has none: a
    L{Settings} is only ever built from a validated configuration.
    """
    return field(metadata={"spec": Spec(default, help, minimum, choices, live, flag,
                                         example_only)})


def spec_of(f: Any) -> Spec | None:
    """The L{Spec} of a dataclass field made by L{setting}, else None."""
    spec = f.metadata.get("spec")
    return spec if isinstance(spec, Spec) else None


@dataclass(frozen=True, slots=True)
class ListenSettings:
    """The public listener (dispatcher in the parent process)."""

    port: str = setting(
        "tcp:3005:backlog=4096", "Twisted endpoint string of the public listener, e.g. "
        "tcp:3005:interface=0.0.0.0:backlog=4096 or systemd:domain=INET:index=0. backlog= is "
        "the kernel's queue of connections not yet accepted, where a reconnection storm waits "
        "while the parent holds listen.max_heads (Twisted's default is 50; the kernel caps it "
        "at net.core.somaxconn).", flag="port")
    admin_port: str = setting(
        "tcp:3006:interface=127.0.0.1", "Plain listener for /health and /metrics only (the public "
        "port's neighbour, on loopback: a Prometheus on the same host scrapes it as it is); an "
        "address your monitoring reaches, e.g. tcp:3006:interface=10.0.0.5, for one elsewhere; "
        "empty: none. Its connections are held to listen.max_heads and listen.max_heads_per_ip "
        "apart from the public port's, so a flood there does not shut it.")
    ws_path: str = setting("/ws", "Path of the WebSocket endpoint.")
    sse_path: str = setting(
        "/sse", "Path of the Server-Sent Events endpoint (docs/protocol.md); empty: no SSE.")
    max_head_bytes: int = setting(
        8192, "Largest HTTP request head accepted (bytes); larger gets 431.", minimum=512)
    head_timeout: float = setting(
        10.0, "Seconds a client has to send its whole HTTP request head (slowloris guard); then "
        "408.", minimum=0.1)
    handoff_timeout: float = setting(
        5.0, "Seconds to wait for a shard to adopt a handed-over connection before closing it.",
        minimum=0.1)
    retry_after: int = setting(5, "Retry-After seconds sent with 503.", minimum=0)
    metrics_timeout: float = setting(
        2.0, "Seconds /metrics waits for each shard's metrics; a shard that does not answer in "
        "time is left out (and not asked again until it answers).", minimum=0.1)
    public_metrics: bool = setting(
        False, "Also serve /metrics on the public port (it is always served on "
        "listen.admin_port). Off by default: each scrape asks every shard over the control "
        "channel.", live=True)
    max_heads: int = setting(
        4096, "Connections the parent may hold at once before their upgrade (sending their "
        "request head, being answered, waiting for or in a handoff); at it the listener stops "
        "accepting until one leaves (new connections wait in the kernel's listen backlog: give "
        "listen.port a backlog=). Each buffers up to listen.max_head_bytes.", minimum=1, live=True)
    max_heads_per_ip: int = setting(
        100, "Of those, connections one client IP may have; beyond it 429. A trusted proxy's own "
        "address counts only against listen.max_heads. At least limits.connection_burst_per_ip "
        "for clients behind one NAT, who reconnect together after a drain "
        "(docs/operations.md, Reconnection storms).", minimum=1, live=True)
    startup_grace: float = setting(
        5.0, "Seconds after start the node waits for every shard to register before it accepts "
        "clients (/health says starting, upgrades get 503); past it, it accepts with the shards "
        "that did.", minimum=0)
    restart_hold: float = setting(
        5.0, "Seconds placement stays at a fair share per alive shard while a restarting shard "
        "(not crash-looping) is due back; beyond the fair share upgrades get 503 with "
        "Retry-After: 1. 0 = off.", minimum=0, live=True)


@dataclass(frozen=True, slots=True)
class KafkaSettings:
    """Kafka ingestion (confluent-kafka). One consumer group per node."""

    brokers: str = setting(
        "127.0.0.1:9092", "Bootstrap brokers, host:port[,host:port...].", flag="kafka-brokers")
    group: str = setting("odinws", "Consumer group prefix (the node id is appended).")
    topics: Mapping[str, Any] = setting(
        {"odin.trades": "trade", "odin.prices": "price", "odin.liquidity": "liquidity"},
        "Topic -> event type. Every record of a topic gets that event type unless "
        "kafka.event_type_field is set and present in the record.")
    token_field: str = setting("", "JSON field holding the token id; empty means the record key.")
    event_type_field: str = setting(
        "", "JSON field that overrides the topic's event type when present; empty means the topic "
        "decides.")
    topic_options: Mapping[str, Any] = setting(
        {}, "Per topic: how its records are read, {format, token, event_type} "
        "(docs/operations.md, \"Value formats and the Schema Registry\"). format: json (the "
        "default), avro, protobuf, jsonschema (Confluent's wire format, schemas from "
        "schema_registry.url) or auto (the wire format when the value starts with its magic "
        "byte, else JSON). token: key (the default), header:NAME or field:NAME (a top-level "
        "field of the decoded value). event_type: topic (the default), header:NAME or "
        "field:NAME (when the record has it; else the topic's). A topic without an entry uses "
        "json and kafka.token_field/kafka.event_type_field.")
    start_offset: str = setting(
        "latest", "Where a new consumer group starts: latest, at each partition's first record "
        "timestamped from the moment the shard's consumer started (so nothing produced while it "
        "joined the group is skipped); earliest, at its beginning. A partition that appears "
        "while the node "
        "runs (added to a topic, or a topic created or recreated) is read from its beginning "
        "either way, unless the group has an offset for it.", choices=("latest", "earliest"))
    metadata_refresh_ms: int = setting(
        5000, "How often each consumer re-reads the topics' metadata (librdkafka "
        "topic.metadata.refresh.interval.ms, its default 5 minutes): partitions added to a topic, "
        "and a topic created, deleted or recreated, are seen within this time.", minimum=100)
    max_record_bytes: int = setting(
        131072, "Records with a larger value are skipped and counted (reason too_large). At most "
        "outbound.max_buffer_bytes.", minimum=1)
    poll_batch: int = setting(
        500, "Most records taken per poll: a poll returns as soon as one record is there, with "
        "whatever else is already fetched. Also the most events one delivery takes when "
        "batches queue behind a busy shard (they are joined into one round of sends).",
        minimum=1)
    poll_timeout: float = setting(
        0.05, "Seconds a poll waits for a first record (not a latency: records are handed over as "
        "soon as they arrive).", minimum=0.001)
    fetch_wait_max_ms: int = setting(
        5, "Longest time a broker may hold a fetch with no new records (librdkafka "
        "fetch.wait.max.ms, its default 500). Apache Kafka answers as soon as records arrive, so "
        "there it only sets how often an idle consumer asks again (1000/value fetches per second "
        "per shard and broker); Tansu, the embedded broker, answers only when it expires, so "
        "there it is the latency floor (measured: 500 ms gives a median of ~250 ms, 5 ms ~4 ms).",
        minimum=1)
    session_timeout_ms: int = setting(
        10000, "Consumer session timeout (classic protocol; the heartbeat is a twentieth of it, "
        "100 ms to 1 s). A broker pause shorter than it by more than a heartbeat leaves the "
        "group untouched; a longer one makes the shards rejoin (docs/operations.md, \"A broker "
        "pause\"). A shard that stays down keeps its partitions unread this long.",
        minimum=1000)
    cooperative_rebalance: bool = setting(
        True, "Cooperative incremental rebalancing (librdkafka partition.assignment.strategy "
        "cooperative-sticky): when a shard crashes or restarts only its partitions move, the "
        "other shards keep theirs and their clients see no pause (measured with Tansu, kill -9 of "
        "one of two members at 200 events/s: the survivor's events were held 0.06 s, against 3.7 "
        "s with eager range assignment, 2 s session). Without kafka.static_membership the dead "
        "shard's partitions wait for its session to expire (kafka.session_timeout_ms). false = "
        "eager range assignment (every rebalance stops every shard). All members of the node's "
        "group must agree: change it with a full restart. kafka.consumer_config's "
        "partition.assignment.strategy, when set, wins.")
    group_protocol: str = setting(
        "classic", "Consumer group protocol: classic (JoinGroup/SyncGroup, the assignor in the "
        "client, kafka.session_timeout_ms and kafka.cooperative_rebalance apply) or consumer "
        "(KIP-848, Apache Kafka 4.x and other brokers that serve it: the broker assigns, and the "
        "session timeout, heartbeat interval and assignor are the broker's group.consumer.* "
        "settings, so kafka.session_timeout_ms and kafka.cooperative_rebalance are not used). "
        "Measured on Apache Kafka 4.4, a killed shard's partitions came back after 1.4-3.2 s "
        "with classic and static membership, 45-49 s with consumer (the broker's 45 s session): "
        "docs/operations.md, \"Verified on Apache Kafka\". All members of the node's group must "
        "agree: change it with a full restart.", choices=("classic", "consumer"))
    static_membership: bool = setting(
        True, "Static group membership (group.instance.id <node_id>-shard<index>): a killed "
        "shard, restarted by the supervisor, rejoins under its own id and gets its partitions "
        "back at once instead of after its session timeout, and the other shards see no "
        "rebalance (measured on Apache Kafka 4.4: docs/operations.md, \"Verified on Apache "
        "Kafka\"). A shard that stays down keeps its partitions unread until its session "
        "expires. Needs node_id unique among the nodes sharing kafka.group: two nodes with one "
        "id fence each other's shards out (/health shows the error). A consumer fenced for "
        "another reason (a broker outage longer than the session can do it) is replaced by a new "
        "one. false: a dead shard's partitions wait for its session to expire "
        "(kafka.session_timeout_ms). Tansu 0.6 never assigns a second static member: set false "
        "there (the demo does).")
    max_poll_interval_ms: int = setting(
        10000, "Consumer max.poll.interval.ms (also the rebalance timeout: keep it small for "
        "quick joins).", minimum=1000)
    retry_backoff_max: float = setting(
        30.0, "Longest wait between reconnects to an unreachable broker (seconds).", minimum=0.1)
    unreachable_grace: float = setting(
        15.0, "Seconds every shard may go without reaching a Kafka broker before /health answers "
        "503 kafka_unreachable (within it: 200, degraded kafka_disconnected), so a broker blip "
        "does not take the node out of a load balancer.", minimum=0, live=True)
    progress_grace: float = setting(
        10.0, "Seconds a partition this node holds may have records to read while its consumer "
        "position does not move before it counts as stalled: /health degraded "
        "partitions_stalled, and the shard holding it leaves the consumer group and joins "
        "again (0: no check). Not counted while the shard pauses its partitions for "
        "back-pressure or cannot reach a broker.", minimum=0)
    consumer_config: Mapping[str, Any] = setting(
        {}, "Extra librdkafka settings passed to the consumer as they are (e.g. "
        "security.protocol).")


@dataclass(frozen=True, slots=True)
class SchemaRegistrySettings:
    """
    The Schema Registry of the topics whose kafka.topic_options format is avro, protobuf,
    jsonschema or auto (Confluent's REST API).
    """

    url: str = setting(
        "", "Base URL(s) of the registry, comma-separated (tried in turn); empty: none (every "
        "topic must then be json).")
    basic_auth_file: str = setting(
        "", "File holding user:password for HTTP basic authentication (empty: none).")
    ca_file: str = setting(
        "", "PEM CA certificates that verify an https registry (empty: the system's trust store).")
    certificate: str = setting("", "PEM client certificate for mutual TLS (empty: none).")
    private_key: str = setting(
        "", "PEM private key of schema_registry.certificate (empty: in the certificate file).")
    timeout: float = setting(
        5.0, "Seconds one request to the registry may take.", minimum=0.1)
    wait: float = setting(
        1.0, "Seconds the consumer thread waits for a schema it does not have yet (fetched in "
        "a thread of its own); a record whose schema has not come by then is skipped and "
        "counted (reason registry_unavailable), and the fetch goes on for the next records.",
        minimum=0, live=True)
    retry: float = setting(
        5.0, "Seconds after a failed fetch before the same schema is asked for again; meanwhile "
        "its records are skipped at once (counted, reason registry_unavailable or "
        "unknown_schema).", minimum=0.1, live=True)
    cache_size: int = setting(
        1000, "Schemas kept per shard (least recently used go first; a smaller size on reload "
        "drops the least recently used at once).", minimum=1, live=True)


@dataclass(frozen=True, slots=True)
class LimitsSettings:
    """Per-node, per-shard and per-client limits."""

    max_connections: int = setting(
        18000, "Connections per node; above it new clients get 503.", minimum=1, live=True)
    max_connections_per_shard: int = setting(10000, "Connections per shard.", minimum=1, live=True)
    max_connections_per_ip: int = setting(
        1000, "Connections one client IP may hold on a shard; beyond it 429.", minimum=1, live=True)
    connection_rate_per_ip: float = setting(
        20.0, "New connections per second per client IP (token bucket at the dispatcher); beyond "
        "it 429.", minimum=0.1, live=True)
    connection_burst_per_ip: int = setting(
        100, "New connections per client IP allowed in a burst.", minimum=1, live=True)
    trusted_proxies: tuple[str, ...] = setting(
        [], "Peer IPs (load balancers) whose X-Forwarded-For names the client IP.", live=True)
    allowed_origins: tuple[str, ...] = setting(
        [], "Allowed Origin headers (exact, e.g. https://app.example.com; null, what a page "
        "opened from a file sends, only when listed); empty allows all, null and none included. "
        "Others, and none when the list is set, get 403; an Origin that is no origin gets 400. "
        "The same on /ws and SSE.", live=True)
    max_channels_per_message: int = setting(
        100, "Channels in one subscribe/unsubscribe message.", minimum=1, live=True)
    max_subscriptions: int = setting(
        100, "Subscriptions per connection (a wildcard counts as one; Centrifugo's per-client "
        "default is 100 too).", minimum=1, live=True)
    max_shard_subscriptions: int = setting(
        500000, "Subscriptions one shard holds over all its connections; past it a subscribe is "
        "refused (server_subscription_limit).", minimum=1, live=True)
    max_shard_subscription_bytes: int = setting(
        268435456, "Memory the subscriptions of one shard may take (bytes, as the index counts "
        "them: ~280 B plus the channel name per subscription, ~360 B more per channel nobody else "
        "holds); past it a subscribe is refused (server_subscription_limit).",
        minimum=65536, live=True)
    ip_subscription_share: float = setting(
        0.1, "Share of max_shard_subscriptions and of max_shard_subscription_bytes the "
        "subscriptions of one client IP may hold on a shard (WebSocket and SSE together), so "
        "that a few addresses cannot fill the shard's budget and refuse everyone else; past it "
        "that address's subscribe is refused (server_subscription_limit). 1 = no per-IP share; "
        "raise it when many clients come from one address (a NAT) without trusted_proxies.",
        minimum=0.001, live=True)
    max_filters_per_connection: int = setting(
        10, "Distinct filters one connection's subscriptions may carry (docs/protocol.md, "
        "\"filter\"); past it a subscribe is refused (too_many_filters).", minimum=1, live=True)
    max_channel_length: int = setting(160, "Longest channel name.", minimum=16, live=True)
    max_message_bytes: int = setting(
        16384, "Largest client message (bytes; a compressed one counts inflated, and inflating "
        "stops there); larger closes with 1009.", minimum=256)
    message_rate: float = setting(
        10.0, "Client messages per second allowed (token bucket); beyond it the client gets a "
        "rate_limited error.", minimum=0.1, live=True)
    message_burst: int = setting(50, "Client messages allowed in a burst.", minimum=1, live=True)
    rate_strikes: int = setting(
        20, "rate_limited errors a connection may collect (a strike is forgiven per second of "
        "good behaviour) before it is closed with 1008.", minimum=1, live=True)
    handshake_timeout: float = setting(
        10.0, "Seconds a handed-over connection has to complete the WebSocket handshake.",
        minimum=0.5)
    max_snapshot_events: int = setting(
        1000, "Events one snapshot may send; a subscribe whose snapshot would send more is "
        "refused (snapshot_too_large).", minimum=1, live=True)
    max_positions: int = setting(
        1000, "Positions one subscribe may carry (one per partition).", minimum=1, live=True)
    recovery_cost: int = setting(
        5, "Tokens of the message rate a subscribe with since or snapshot spends (its own "
        "included): recoveries and snapshots read history, plain messages do not.",
        minimum=1, live=True)
    replay_rate: int = setting(
        262144, "Bytes per second of recovery replays and snapshots one connection may be sent "
        "(token bucket, replayed envelopes counted when the subscribe is answered); a subscribe "
        "whose answer would pass it is refused (replay_rate_limited), so re-requesting a replay "
        "cannot multiply a client's egress.", minimum=1024, live=True)
    replay_burst: int = setting(
        4194304, "Bytes of replays and snapshots one connection may be sent at once; a larger "
        "answer goes through only with a full bucket, and the connection then waits until "
        "replay_rate has paid it back.", minimum=1024, live=True)
    max_recovery_scan: int = setting(
        20000, "Retained events one recovery may look at, all partitions together (the "
        "subscribed channels' events, through the per-channel index; everything after "
        "the positions for *.*); a recovery that would look at more is answered "
        "recovered: false (too_large).",
        minimum=1, live=True)
    max_filter_bytes: int = setting(
        1024, "Longest subscription filter (bytes of its compact JSON); a longer one is refused "
        "(filter_too_large).", minimum=64, live=True)
    max_shard_filters: int = setting(
        10000, "Distinct subscription filters one shard holds (each is compiled once and "
        "evaluated once per event, however many subscriptions share it); past it a subscribe "
        "with a new filter is refused (server_filter_limit).", minimum=1, live=True)


@dataclass(frozen=True, slots=True)
class KeepaliveSettings:
    """Keepalive: server pings and idle connections."""

    ping_interval: float = setting(30.0, "Seconds between server pings (0 = no pings).", minimum=0)
    ping_timeout: float = setting(
        10.0, "Seconds a client has to answer a ping before it is dropped.", minimum=0.5)
    idle_timeout: float = setting(
        60.0, "Seconds a connection may stay open without any subscription before it is closed "
        "with 1000 (0 = never).", minimum=0)


@dataclass(frozen=True, slots=True)
class OutboundSettings:
    """Outbound buffering per connection and the slow-client policy."""

    max_buffer_bytes: int = setting(
        262144, "Outbound bytes a connection may have waiting (kernel-refused plus queued); past "
        "it the slow-client policy applies.", minimum=1024, live=True)
    kernel_unsent_bytes: int = setting(
        65536, "Unsent bytes the kernel may queue per client socket (TCP_NOTSENT_LOWAT) before "
        "odinws's own buffer and policy take over; 0 leaves the kernel's default (up to "
        "net.ipv4.tcp_wmem's maximum, 4 MiB, per stalled client). Applies to new connections.",
        minimum=0, live=True)
    policy: Mapping[str, Any] = setting(
        {"default": "drop", "price": "conflate", "liquidity": "conflate"},
        "Slow-client policy per event type ('default' for the rest): drop, conflate (keep the "
        "latest event per channel) or disconnect.",
        choices=("drop", "conflate", "disconnect"), live=True)
    disconnect_grace: float = setting(
        5.0, "Seconds a connection under the disconnect policy may stay over its buffer limit "
        "before it is closed.", minimum=0, live=True)
    max_event_age: float = setting(
        60.0, "Events older than this (seconds, by their Kafka timestamp) are not delivered live: "
        "a backlog read after a restart or a long lag is kept for recovery and snapshots only, "
        "and counted (odinws_events_stale_total). 0 = deliver whatever the age. Producer clocks "
        "must be within it of the node's.", minimum=0, live=True)
    flush_delay: float = setting(
        0.0, "Flush window in seconds (0 = off: written at once): events queued within the window "
        "go out when it ends, in one write per connection (fewer, larger writes under load for up "
        "to this much added latency; Centrifugo's client_write_delay). One timer per shard.",
        minimum=0, live=True)
    native: str = setting(
        "auto", "The fan-out's per-connection send loop in C (built with the package): auto uses it "
        "where it was built and else runs the pure-Python loop (logged once, shown in /health as "
        "outbound_native and in odinws_outbound_native); on refuses to start without it; off "
        "always runs the Python loop. Applies at start.", choices=("auto", "on", "off"))
    compression: bool = setting(
        True, "Offer permessage-deflate (RFC 7692) to WebSocket clients that ask for it (browsers "
        "do): each event is compressed once per shard for all of them, without context takeover "
        "(docs/protocol.md, Compression). Off: offers are declined and every frame goes out "
        "plain. Applies to new connections.", live=True)
    compression_min_bytes: int = setting(
        128, "Event payloads smaller than this go out uncompressed even to connections that "
        "negotiated compression (small messages gain little without context takeover).",
        minimum=0, live=True)


@dataclass(frozen=True, slots=True)
class HubSettings:
    """Relay of events between shards through the parent."""

    max_event_bytes: int = setting(
        4194304, "Largest event relayed between shards; larger ones are delivered only by the "
        "shard that consumed them and counted.", minimum=1024)
    max_queue_batches: int = setting(
        256, "Batches queued per shard in the hub; past it the oldest are dropped and counted.",
        minimum=1)
    max_queue_bytes: int = setting(
        67108864, "Bytes queued per shard in the hub (the parent's memory for a slow or stuck "
        "shard); past it the oldest batches are dropped and counted like past "
        "hub.max_queue_batches. The newest batch is kept whatever its size.", minimum=65536)


@dataclass(frozen=True, slots=True)
class HistorySettings:
    """
    Recent events kept by every shard for recovery after a reconnect and for snapshots on
    subscribe (docs/protocol.md, docs/operations.md).
    """

    max_events_per_partition: int = setting(
        10000, "Events kept per Kafka partition for recovery.", minimum=0, live=True)
    max_age: float = setting(
        300.0, "Seconds an event is kept for recovery (by its Kafka timestamp); 0 = no age bound.",
        minimum=0, live=True)
    max_bytes: int = setting(
        67108864, "Bytes of history per shard (envelopes plus ~400 B per event); past it the "
        "oldest events go first, whatever the partition, and the recovery window is shorter than "
        "configured.", minimum=0, live=True)
    snapshot_channels: int = setting(
        100000, "Channels whose latest event is kept for snapshots (least recently updated "
        "dropped first).", minimum=0, live=True)
    warmup_timeout: float = setting(
        15.0, "Seconds a starting shard may spend reading the recent past of every partition back "
        "from Kafka into its history and snapshot cache (within the bounds above); 0 = no "
        "warm-up: the history starts empty. Applies at the next shard start.", minimum=0, live=True)
    recovery_hold: float = setting(
        15.0, "Seconds a recovery (a subscribe with since) may wait for this shard to load or "
        "catch up on a partition it cannot answer truly yet: while the warm-up still reads the "
        "past back, or while a position is past what the shard has seen (a dead shard's "
        "partition not consumed again yet: about 10 s with the shipped session). Then it is "
        "answered as things stand (docs/protocol.md). 0 = answer at once.", minimum=0,
        live=True)


@dataclass(frozen=True, slots=True)
class SupervisorSettings:
    """Shard processes: restart backoff and shutdown."""

    restart_min_delay: float = setting(
        0.5, "Restart delay of a shard that died before it was up (see "
        "supervisor.restart_reset_after), doubling with each such death; a shard that had been "
        "up restarts at once.", minimum=0)
    restart_max_delay: float = setting(
        30.0, "Longest restart delay (doubles per crash).", minimum=0)
    restart_reset_after: float = setting(
        1.0, "Seconds a shard must have been up (registered with the parent) for its death to "
        "count as a crash of a running shard: it restarts at once and the doubling starts over, "
        "unless it is crash-looping. A shard that dies sooner (it could not start, or failed "
        "right after) or while crash-looping waits supervisor.restart_min_delay, then twice "
        "as long as the time before, up to supervisor.restart_max_delay.", minimum=0)
    crash_loop_restarts: int = setting(
        5, "Restarts within supervisor.crash_loop_window that mark a shard as crash-looping.",
        minimum=1)
    crash_loop_window: float = setting(60.0, "Seconds, see above.", minimum=1)
    drain_timeout: float = setting(10.0, "Seconds shards get to drain on stop.", minimum=0)
    kill_timeout: float = setting(5.0, "Seconds after SIGTERM before SIGKILL.", minimum=0)
    stats_interval: float = setting(1.0, "Seconds between shard stat reports.", minimum=0.05)
    stats_stale_after: float = setting(
        3.0, "Seconds without a stat report after which a running shard counts as stalled and "
        "gets no new clients (at least twice supervisor.stats_interval).", minimum=0.1, live=True)
    max_handoffs_in_flight: int = setting(
        64, "Handoffs to one shard sent and not yet answered; at this many the shard gets no new "
        "client until one is answered.", minimum=1, live=True)


@dataclass(frozen=True, slots=True)
class TlsSettings:
    """TLS (wss://) terminated in the shards; empty certificate = plain ws://."""

    certificate: str = setting(
        "", "PEM certificate chain (leaf first); re-read on SIGHUP.", live=True)
    private_key: str = setting("", "PEM private key (empty = in the certificate file).", live=True)


@dataclass(frozen=True, slots=True)
class AuthSettings:
    """Authentication: JWT connection tokens with channel claims (docs/security.md)."""

    mode: str = setting(
        "none", "none, or jwt: every client needs a valid token.", choices=("none", "jwt"))
    token_sources: tuple[str, ...] = setting(
        ["subprotocol", "header", "query"],
        "Where a token may be: subprotocol (Sec-WebSocket-Protocol: odinws, bearer.<JWT>), "
        "header (Authorization: Bearer), query (?token=).",
        choices=("subprotocol", "header", "query"))
    secret: str = setting("", "HS256 shared secret (prefer auth.secret_file).", live=True)
    secret_file: str = setting("", "File holding the HS256 shared secret.", live=True)
    public_key_file: str = setting("", "PEM public key for RS256/ES256 tokens.", live=True)
    jwks_file: str = setting("", "JWKS file (keys chosen by kid); re-read on SIGHUP.", live=True)
    jwks_url: str = setting(
        "", "HTTPS URL of a JWKS (keys chosen by kid), instead of auth.jwks_file: each shard "
        "fetches it at start, every auth.jwks_refresh seconds and when a token names an unknown "
        "kid; while it is unreachable the keys already fetched keep working.", live=True)
    jwks_ca_file: str = setting(
        "", "PEM CA certificates that verify auth.jwks_url's server (empty = the system's trust "
        "store).", live=True)
    jwks_refresh: float = setting(
        300.0, "Seconds between two fetches of auth.jwks_url.", minimum=1, live=True)
    jwks_min_refresh: float = setting(
        30.0, "A token with an unknown kid makes the shard fetch auth.jwks_url again at most "
        "once per this many seconds.", minimum=0.1, live=True)
    jwks_timeout: float = setting(
        5.0, "Seconds a fetch of auth.jwks_url may take (connect, TLS, answer).", minimum=0.1,
        live=True)
    audience: str = setting(
        "", "Required aud claim (empty: tokens must carry no aud claim, as RFC 7519 asks).",
        live=True)
    issuer: str = setting("", "Required iss claim (empty = not checked).", live=True)
    leeway: float = setting(30.0, "Clock skew allowed for exp/nbf, seconds.", minimum=0, live=True)
    channels_claim: str = setting(
        "channels", "Claim listing the channel patterns a client may subscribe to.", live=True)
    max_token_bytes: int = setting(
        8192, "Longer tokens are refused unparsed.", minimum=256, live=True)


@dataclass(frozen=True, slots=True)
class GuardSettings:
    """
    Resource guard: refuse new connections near the CPU/memory budget (cgroup limits, else the
    host).
    """

    cpu_threshold: float = setting(
        0.9, "Refuse new connections while the node uses more than this fraction of its CPU "
        "budget (0 = never).", minimum=0, live=True)
    memory_threshold: float = setting(
        0.85, "Refuse new connections while the node uses more than this fraction of its memory "
        "budget (0 = never).", minimum=0, live=True)
    interval: float = setting(1.0, "Seconds between resource samples.", minimum=0.1)


@dataclass(frozen=True, slots=True)
class LogSettings:
    """Logging."""

    format: str = setting(
        "text", "text or json (one JSON object per line).",
        choices=("text", "json"), flag="log-format")
    level: str = setting("info", "Lowest level logged.", choices=("debug", "info", "warn", "error"))
    audit_file: str = setting(
        "", "Also write the audit stream (rejections, rate-limit closes, shard restarts, reloads) "
        "as JSON lines to this file; empty = main log only.")
    max_lines_per_second: int = setting(
        50, "Lines with the same message allowed per second; the rest are counted and summarised.",
        minimum=1)


@dataclass(frozen=True, slots=True)
class DemoSettings:
    """The demo page (off by default)."""

    enabled: bool = setting(False, "Serve the demo page at / on the public port.")


class Validated(Protocol):
    """
    The validated configuration a L{Settings} is built from and keeps
    (L{odin_ws.common.config.Config}: config.py derives its schema from
    this module, so this one names only what it uses of it).
    """

    def __getitem__(self, key: str) -> Any: ...

    def __iter__(self) -> Iterator[str]: ...

    @property
    def node_id(self) -> str: ...

    @property
    def group_id(self) -> str: ...

    def to_json(self) -> str: ...


#: The heading of the top-level settings in the example file.
NODE_DOC = "Node identity and process layout."


@dataclass(frozen=True, slots=True)
class Settings:
    """Every setting of one process, by section; C{config} is what it was built from."""

    listen: ListenSettings
    kafka: KafkaSettings
    schema_registry: SchemaRegistrySettings
    limits: LimitsSettings
    keepalive: KeepaliveSettings
    outbound: OutboundSettings
    hub: HubSettings
    history: HistorySettings
    supervisor: SupervisorSettings
    tls: TlsSettings
    auth: AuthSettings
    guard: GuardSettings
    log: LogSettings
    demo: DemoSettings
    config: Validated
    # The top-level settings (the example file's first section): last, as
    # type checkers take setting() for a default.
    node_id: str = setting(
        "", "Name of this node; empty means the host name. The Kafka consumer group is "
        "<kafka.group>-<node_id>.", example_only=True)
    shards: int = setting(
        1, "Number of shard processes (one per CPU core is best).", minimum=1, flag="shards")
    cpu_affinity: object = setting(
        "auto", "'auto' pins shard i to the i-th CPU the parent may use (respects cpusets), 'off' "
        "leaves scheduling to the kernel, or a list of CPU numbers.")

    @classmethod
    def from_config(cls, config: Validated) -> "Settings":
        """Build the typed view of C{config} (lists become tuples, dicts read-only)."""
        values: dict[str, Any] = {}
        for f in fields(cls):
            if isinstance(f.type, type) and is_dataclass(f.type):
                values[f.name] = f.type(**{
                    g.name: _frozen(config[f"{f.name}.{g.name}"]) for g in fields(f.type)})
            elif spec_of(f) is not None:
                values[f.name] = _frozen(config[f.name])
        values["node_id"] = config.node_id
        return cls(config=config, **values)

    @property
    def group_id(self) -> str:
        """The node's Kafka consumer group."""
        return self.config.group_id


def _frozen(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_frozen(v) for v in value)
    if isinstance(value, dict):
        return MappingProxyType({k: _frozen(v) for k, v in value.items()})
    return value
