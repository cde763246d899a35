"""
Typed, frozen settings, built once from a validated L{Config} (whose schema
in L{odin_ws.common.config} stays the one source of every default). A
component takes the section it needs (C{settings.limits.max_connections},
not C{config["limits.max_connections"]}); a reload builds a new
L{Settings} from L{config.apply_live}'s result and hands it to every holder.

The classes mirror the schema's sections; C{tests/common/test_settings.py}
fails when a key is added to the schema and not here (or the reverse).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from types import MappingProxyType
from typing import Any

from odin_ws.common.config import Config


@dataclass(frozen=True, slots=True)
class ListenSettings:
    """The public listener (dispatcher in the parent process)."""

    port: str
    admin_port: str
    ws_path: str
    sse_path: str
    max_head_bytes: int
    head_timeout: float
    handoff_timeout: float
    retry_after: int
    metrics_timeout: float
    public_metrics: bool
    max_heads: int
    max_heads_per_ip: int
    startup_grace: float
    restart_hold: float


@dataclass(frozen=True, slots=True)
class KafkaSettings:
    """Kafka ingestion (confluent-kafka). One consumer group per node."""

    brokers: str
    group: str
    topics: Mapping[str, Any]
    token_field: str
    event_type_field: str
    start_offset: str
    max_record_bytes: int
    poll_batch: int
    poll_timeout: float
    fetch_wait_max_ms: int
    session_timeout_ms: int
    cooperative_rebalance: bool
    group_protocol: str
    static_membership: bool
    max_poll_interval_ms: int
    retry_backoff_max: float
    unreachable_grace: float
    consumer_config: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class LimitsSettings:
    """Per-node, per-shard and per-client limits."""

    max_connections: int
    max_connections_per_shard: int
    max_connections_per_ip: int
    connection_rate_per_ip: float
    connection_burst_per_ip: int
    trusted_proxies: tuple[str, ...]
    allowed_origins: tuple[str, ...]
    max_channels_per_message: int
    max_subscriptions: int
    max_shard_subscriptions: int
    max_shard_subscription_bytes: int
    max_channel_length: int
    max_snapshot_events: int
    max_positions: int
    max_message_bytes: int
    message_rate: float
    message_burst: int
    rate_strikes: int
    handshake_timeout: float


@dataclass(frozen=True, slots=True)
class KeepaliveSettings:
    """Keepalive: server pings and idle connections."""

    ping_interval: float
    ping_timeout: float
    idle_timeout: float


@dataclass(frozen=True, slots=True)
class OutboundSettings:
    """Outbound buffering per connection and the slow-client policy."""

    max_buffer_bytes: int
    kernel_unsent_bytes: int
    policy: Mapping[str, Any]
    disconnect_grace: float
    max_event_age: float
    flush_delay: float


@dataclass(frozen=True, slots=True)
class HubSettings:
    """Relay of events between shards through the parent."""

    max_event_bytes: int
    max_queue_batches: int
    max_queue_bytes: int


@dataclass(frozen=True, slots=True)
class HistorySettings:
    """Recent events kept by every shard for recovery and snapshots."""

    max_events_per_partition: int
    max_age: float
    max_bytes: int
    snapshot_channels: int
    warmup_timeout: float


@dataclass(frozen=True, slots=True)
class SupervisorSettings:
    """Shard processes: restart backoff, shutdown, liveness and handoffs in flight."""

    restart_min_delay: float
    restart_max_delay: float
    crash_loop_restarts: int
    crash_loop_window: float
    drain_timeout: float
    kill_timeout: float
    stats_interval: float
    stats_stale_after: float
    max_handoffs_in_flight: int


@dataclass(frozen=True, slots=True)
class TlsSettings:
    """TLS (wss://) terminated in the shards; empty certificate = plain ws://."""

    certificate: str
    private_key: str


@dataclass(frozen=True, slots=True)
class AuthSettings:
    """Authentication: JWT connection tokens with channel claims (docs/security.md)."""

    mode: str
    token_sources: tuple[str, ...]
    secret: str
    secret_file: str
    public_key_file: str
    jwks_file: str
    jwks_url: str
    jwks_ca_file: str
    jwks_refresh: float
    jwks_min_refresh: float
    jwks_timeout: float
    audience: str
    issuer: str
    leeway: float
    channels_claim: str
    max_token_bytes: int


@dataclass(frozen=True, slots=True)
class GuardSettings:
    """Resource guard: refuse new connections near the CPU/memory budget (cgroup limits, else the host)."""

    cpu_threshold: float
    memory_threshold: float
    interval: float


@dataclass(frozen=True, slots=True)
class LogSettings:
    """Logging."""

    format: str
    level: str
    audit_file: str
    max_lines_per_second: int


@dataclass(frozen=True, slots=True)
class DemoSettings:
    """The demo page (off by default)."""

    enabled: bool


@dataclass(frozen=True, slots=True)
class Settings:
    """Every setting of one process, by section; C{config} is what it was built from."""

    node_id: str
    shards: int
    cpu_affinity: object
    listen: ListenSettings
    kafka: KafkaSettings
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
    config: Config

    @classmethod
    def from_config(cls, config: Config) -> Settings:
        """Build the typed view of C{config} (lists become tuples, dicts read-only)."""
        sections = {}
        for f in fields(cls):
            if f.name in _SECTIONS:
                section = _SECTIONS[f.name]
                sections[f.name] = section(**{
                    g.name: _frozen(config[f"{f.name}.{g.name}"]) for g in fields(section)})
        return cls(node_id=config.node_id, shards=config["shards"],
                   cpu_affinity=_frozen(config["cpu_affinity"]), config=config, **sections)

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


_SECTIONS: dict[str, type] = {
    "listen": ListenSettings,
    "kafka": KafkaSettings,
    "limits": LimitsSettings,
    "keepalive": KeepaliveSettings,
    "outbound": OutboundSettings,
    "hub": HubSettings,
    "history": HistorySettings,
    "supervisor": SupervisorSettings,
    "tls": TlsSettings,
    "auth": AuthSettings,
    "guard": GuardSettings,
    "log": LogSettings,
    "demo": DemoSettings,
}
