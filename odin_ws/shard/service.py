"""
One shard: its own process and reactor, serving the WebSocket clients the
parent hands over, consuming its share of the Kafka partitions, and trading
events with the other shards through the parent's hub.

The control channel is the inherited Unix socket (fd 3 by default). When it
closes, the parent is gone and the shard stops: no orphan outlives its parent.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from typing import TYPE_CHECKING, Any

from prometheus_client.registry import Collector
from twisted.application import service
from twisted.internet import defer, protocol, task
from twisted.logger import Logger
from twisted.protocols import amp

from odin_ws.common import commands, handoff, metrics, openfiles
from odin_ws.common.config import Config, ConfigError, apply_live
from odin_ws.common.events import Event, Partition, decode_batch, encode_batch
from odin_ws.common.highwater import HighWater
from odin_ws.common.logs import audit, install_logging
from odin_ws.common.settings import Settings
from odin_ws.shard.clients import auth, tls
from odin_ws.shard.clients.closecodes import CLOSE_RESTARTING
from odin_ws.shard.clients.connections import Connections
from odin_ws.shard.clients.jwks import RemoteJwks
from odin_ws.shard.clients.options import SubscriptionOptions
from odin_ws.shard.clients.recoveryhold import RecoveryHold
from odin_ws.shard.clients.websocket import ClientFactory
from odin_ws.shard.delivery import nativesend
from odin_ws.shard.delivery.behind import Backlog
from odin_ws.shard.delivery.deflate import Deflate
from odin_ws.shard.delivery.fanout import Fanout
from odin_ws.shard.delivery.outbox import Outbox
from odin_ws.shard.delivery.pipeline import Delivery
from odin_ws.shard.delivery.ssefeed import Streams
from odin_ws.shard.delivery.subscriptions import SubscriptionIndex
from odin_ws.shard.delivery.variantfeed import VariantFeed
from odin_ws.shard.delivery.variants import VariantIndex
from odin_ws.shard.delivery.writestats import WriteStats, WriteStatsCollector
from odin_ws.shard.history.store import History, HistoryCollector
from odin_ws.shard.kafka.backfill import Backfill
from odin_ws.shard.kafka.ingest import KafkaIngest
from odin_ws.shard.kafka.records import RecordMapper
from odin_ws.shard.kafka.valueformats import UndecodableAudit, ValueDecoder
from odin_ws.shard.kafka.warmread import WarmedPartition, WarmupReport, WarmupState
from odin_ws.shard.kafka.warmup import HistoryWarmup

if TYPE_CHECKING:
    from odin_ws.shard.kafka.schemasource import SchemaSource


class ParentLink(amp.AMP):
    """The shard's end of the control channel (the parent's end is its C{ShardLink})."""

    def __init__(self, shard: Shard):
        super().__init__()
        self.shard = shard

    def connectionMade(self):
        super().connectionMade()
        self.shard.link_made(self)

    def connectionLost(self, reason):
        super().connectionLost(reason)
        self.shard.link_lost()

    @commands.Handoff.responder
    def handoff(self, fd, head, peer, tls):
        return {"connections": self.shard.adopt(fd, head, tls)}

    @commands.Deliver.responder
    def deliver(self, batch):
        self.shard.delivery.deliver(decode_batch(batch))
        return {}

    @commands.GetMetrics.responder
    def get_metrics(self):
        return {"text": metrics.exposition(metrics.Process.SHARD)}

    @commands.Reload.responder
    def reload(self, config):
        self.shard.reload(Settings.from_config(Config.from_json(config.decode())))
        return {}

    @commands.Rejoin.responder
    def rejoin(self):
        return {"rejoining": self.shard.kafka.rejoin()}

    @commands.Drain.responder
    def drain(self, window):
        return self.shard.drain(window).addCallback(lambda n: {"closed": n})


class Shard(service.MultiService):
    """
    A shard process's service tree: its lifecycle and control channel, and
    the assembly of the pieces that each own one thing: the connections
    (L{Connections}), the delivery path (L{Delivery}), Kafka intake
    (L{KafkaIngest}) and the start's warm-up (L{HistoryWarmup}, joined by
    L{Backfill}). The client transports reach the shard through the small
    interfaces they declare (L{odin_ws.shard.clients.host.ClientHost} and its
    extensions), which it implements by handing each call to its owner.
    """

    log = Logger()

    def __init__(self, reactor: Any, settings: Settings, number: int,
                 control_fd: int | None = 3):
        super().__init__()
        self.reactor = reactor
        #: Every setting, typed; replaced as a whole by L{reconfigure}.
        self.settings = settings
        self.number = number
        self.control_fd = control_fd
        self.accepting = True
        self.link: ParentLink | None = None
        #: The keys of auth.jwks_url, kept across reloads (idle without one).
        self.jwks = RemoteJwks(reactor, settings.auth)
        self.verifier = auth.Verifier(settings.auth, self.jwks)
        self.tls_options = tls.server_options(settings.tls) if tls.enabled(settings.tls) else None
        self.connections = Connections(reactor, settings)
        self.subscriptions = SubscriptionIndex(settings.limits)
        self.stats = WriteStats()
        #: The fan-out's send loop (outbound.native, applied at start).
        self.native = nativesend.select(settings.outbound.native)
        metrics.OUTBOUND_NATIVE.set(1 if self.native.send_runs is not None else 0)
        #: Compression of event frames, once per event (odin_ws/shard/delivery/deflate.py).
        self.deflate = Deflate(self.stats, settings.outbound.compression,
                               settings.outbound.compression_min_bytes)
        self.fanout = Fanout(reactor, self.stats, settings.outbound.flush_delay,
                             self.native.send_runs, self.deflate)
        #: Subscriptions with options (delta, max_rate, filter) and their delivery.
        variants = VariantIndex(self.subscriptions.budget)
        self.variants = VariantFeed(reactor, variants, self.fanout)
        self.options = SubscriptionOptions(settings.limits, variants, self.variants)
        #: Recent events of every partition, for recovery and snapshots.
        self.history = History(clock=time.time, **_history_bounds(settings))
        #: What a slow connection catches up from (odin_ws/shard/delivery/catchup.py).
        self.backlog = Backlog(self.history,
                               lambda box: self.options.patterns_of(box, self.subscriptions),
                               settings, keeps=lambda box: self.options.catchup_keeps(box))
        #: The shard's Server-Sent Events streams (odin_ws/shard/clients/sse.py).
        self.streams = Streams(reactor, settings, self.fanout, self.history, self.subscriptions)
        # Highest offset seen per (topic, partition) from any source, so a
        # partition re-read after a rebalance is not delivered twice (reset
        # when the partition's log is a new one: see HighWater).
        self.delivery = Delivery(settings, self.subscriptions, self.fanout, self.history,
                                 self.streams, HighWater(f"shard {number}"), self._publish,
                                 self.variants)
        self.factory = ClientFactory(self)
        #: The Schema Registry's schemas (None: every topic is JSON).
        self.schemas: SchemaSource | None = None
        if settings.schema_registry.url:
            # Imported only then: the registry client is a large part of a
            # shard's start (odin_ws/shard/kafka/valueformats.py).
            from odin_ws.shard.kafka.schemasource import SchemaSource
            self.schemas = SchemaSource.from_settings(settings.schema_registry)
        mapper = RecordMapper.from_settings(settings.kafka, ValueDecoder(
            self.schemas, UndecodableAudit(
                lambda fmt, **kw: reactor.callFromThread(audit.warn, fmt, **kw))))
        self.kafka = KafkaIngest(reactor, settings, number, mapper, self.delivery.on_kafka_batch)
        self.kafka.setServiceParent(self)
        #: Joins what the warm-up reads back from Kafka to live delivery.
        self.backfill = Backfill(self.delivery)
        self.delivery.rereading = self.backfill.rereading
        self.delivery.gate.started_ms = self.backfill.started_ms
        # What the warm-up read joins the history only where the hub's marks
        # are known (Delivery.hold): they decide what counts as the past.
        self.warmup = HistoryWarmup(reactor, settings, mapper,
                                    self.kafka.consumer_config(), self._backfill,
                                    self._warmed, on_late=self._late_warmed)
        self.warmup.setServiceParent(self)
        # A partition first seen after the warm-up ended waits for its own
        # (odin_ws/shard/delivery/warmgate.py).
        self.delivery.gate.warm_late = self.warmup.warm
        warming = lambda: (self.warmup.reading  # noqa: E731
                           or self.delivery.holding)
        self.history.loading = warming
        #: Recoveries waiting until this shard can answer them truly.
        self.recoveries = RecoveryHold(reactor, self.history, warming,
                                       lambda: self.settings.history.recovery_hold)
        # Connections the open-files limit leaves room for (set at start).
        self._fd_room: int | None = None
        self._stats_loop = task.LoopingCall(self.report_stats)
        self._stats_loop.clock = reactor
        self._collectors: list[Collector] = [WriteStatsCollector(self.stats), HistoryCollector(
            self.history, lambda: self.settings.history.max_age)]

    # -- lifecycle

    def setServiceParent(self, parent: Any) -> None:
        super().setServiceParent(parent)
        # The parent logs each line of a shard's output with its own
        # timestamp (odin_ws/parent/supervisor.py): one timestamp per line.
        install_logging(self.settings.log, parent, timestamps=False)

    def startService(self) -> None:
        if self.control_fd is not None:
            # The parent handles Ctrl-C for the whole process group and drains us.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            self.reactor.adoptStreamConnection(
                self.control_fd, socket.AF_UNIX,
                protocol.Factory.forProtocol(lambda: ParentLink(self)))
            os.close(self.control_fd)
        # Inherited from the parent, which raised it; a shard started alone raises it here.
        soft, _ = openfiles.ensure(openfiles.needed(self.settings))
        self._fd_room = openfiles.connection_room(soft)
        for collector in self._collectors:
            metrics.REGISTRY.register(collector)
        metrics.GC_PAUSES.watch()
        self.jwks.start()
        super().startService()
        if self.warmup.report.state is WarmupState.RUNNING:
            # Before any batch can arrive (they come from the consumer's
            # thread, in a later turn): partitions without a mark wait for
            # their warm-up (odin_ws/shard/delivery/warmgate.py).
            self.delivery.gate.close()
        self._stats_loop.start(self.settings.supervisor.stats_interval, now=False)

    def stopService(self) -> defer.Deferred[None]:
        if self._stats_loop.running:
            self._stats_loop.stop()
        self.connections.abort_all()
        # No client left to mislead: what waits for the warm-up is taken, so
        # the consumer's stop does not wait for it.
        self.delivery.gate.stop()
        self.variants.stop()
        self.streams.options.stop()
        for collector in self._collectors:
            metrics.REGISTRY.unregister(collector)
        metrics.GC_PAUSES.unwatch()
        stopped = defer.gatherResults([self.jwks.stop(), defer.maybeDeferred(super().stopService)])
        return stopped.addBoth(self._close_schemas).addCallback(lambda _: None)

    def _close_schemas(self, result: object) -> object:
        # After the consumer threads stopped: they may ask for schemas until then.
        if self.schemas is not None:
            self.schemas.close()
        return result

    def link_made(self, link: ParentLink) -> None:
        self.link = link
        if self.settings.shards > 1:
            # The hub's marks first: what the node delivered before this
            # process existed (Delivery.hold).
            self.delivery.hold()
        registered = link.callRemote(commands.Register, index=self.number, pid=os.getpid(),
                                     capacity=self.capacity)
        registered.addCallback(lambda answer: self.delivery.marks_known(answer["marks"]))
        registered.addErrback(self._not_registered)

    def _not_registered(self, failure: Any) -> None:
        self.log.failure("registering with the parent", failure)
        self.delivery.marks_known(None)

    def _backfill(self, warmed: WarmedPartition) -> None:
        def join() -> None:
            try:
                self.backfill.backfill(warmed)
            finally:
                self.delivery.gate.warmed(warmed.topic, warmed.partition)
        self.delivery.when_ready(join)

    def _warmed(self, report: WarmupReport) -> None:
        self.backfill.warmed(report)
        # In turn with the partitions handed over (Delivery.when_ready).
        self.delivery.when_ready(self.delivery.gate.open)

    def _late_warmed(self, partitions: set[tuple[str, int]], report: WarmupReport) -> None:
        self.backfill.warmed(report, late=partitions)
        self.delivery.when_ready(lambda: self.delivery.gate.late_done(
            {Partition(*p) for p in partitions}))

    #: Seconds clients get to answer the 4000 close when the parent is gone.
    ORPHAN_CLOSE_SECONDS = 1.0

    def link_lost(self) -> None:
        self.link = None
        if self.running:
            self.log.info("control channel closed: parent gone, shard {n} stopping", n=self.number)
            # Clients get the documented 4000, not a 1006 drop: stopping aborts
            # every socket, so give the close frames a moment to go out first.
            closing = self.drain(0).addTimeout(self.ORPHAN_CLOSE_SECONDS, self.reactor)
            closing.addBoth(lambda _: self.reactor.stop())

    def _publish(self, events: list[Event]) -> defer.Deferred[Any] | None:
        """
        Relay a batch this shard consumed to the other shards, through the
        hub. A node of one shard has no other shard: the batch is taken at
        once, without a round trip through the parent per batch (with
        C{kafka.poll_batch} 1 that was one per event, and at most
        C{MAX_PENDING} of them in flight held the consumer back whenever the
        parent's CPU was busy; docs/performance.md).
        """
        if self.link is None or self.settings.shards == 1:
            return None
        return self.link.callRemote(commands.Publish, batch=encode_batch(events))

    @property
    def capacity(self) -> int:
        """limits.max_connections_per_shard, or fewer if the open-files limit says so."""
        per_shard = self.settings.limits.max_connections_per_shard
        return per_shard if self._fd_room is None else min(per_shard, self._fd_room)

    def policy_for(self, event_type: str) -> str:
        """The slow-client policy of C{event_type} (C{outbound.policy}, live)."""
        policies = self.settings.outbound.policy
        return policies.get(event_type) or policies.get("default", "drop")

    def adopt(self, fd: int, head: bytes, use_tls: bool) -> int:
        """Serve a socket the parent handed over; the number of connections after it."""
        # Not named "tls": that would shadow the odin_ws.shard.clients.tls module used below.
        if not self.accepting or len(self.connections) >= self.capacity:
            os.close(fd)
            raise commands.HandoffRefused("shard full or draining")
        if use_tls:
            if self.tls_options is None:
                os.close(fd)
                raise commands.HandoffRefused("TLS is not configured on this shard")
            handoff.adopt(self.reactor, fd, tls.wrap(self.tls_options, self.factory), head)
        else:
            handoff.adopt(self.reactor, fd, self.factory, head)
        return len(self.connections)

    def reload(self, new: Settings) -> None:
        """Apply the settings that may change live; keep the rest until restart."""
        settings, live, _ = apply_live(self.settings, new)
        try:
            verifier = auth.Verifier(settings.auth, self.jwks)
            options = tls.server_options(settings.tls) if tls.enabled(settings.tls) else None
        except ConfigError as e:
            self.log.error("reload refused: {e}", e=e)
            return
        self.verifier = verifier
        self.jwks.reconfigure(settings.auth)
        self.tls_options = options
        self.reconfigure(settings)
        self.log.info("shard {n} reloaded: {keys}", n=self.number, keys=", ".join(live) or "no changes")

    def reconfigure(self, settings: Settings) -> None:
        """
        The one path reloaded settings take to every holder in the shard:
        the shard itself, its pieces, its client factory (for new
        connections) and every connection (its outbox limits, its message rate).
        """
        self.settings = settings
        self.history.configure(**_history_bounds(settings))
        self.fanout.reconfigure(settings.outbound.flush_delay)
        self.deflate.reconfigure(settings.outbound.compression,
                                 settings.outbound.compression_min_bytes)
        self.factory.reconfigure(settings)
        self.subscriptions.reconfigure(settings.limits)
        self.options.reconfigure(settings.limits)
        self.backlog.reconfigure(settings)
        self.connections.reconfigure(settings)
        self.delivery.reconfigure(settings)
        self.streams.reconfigure(settings)
        if self.schemas is not None:
            self.schemas.reconfigure(settings.schema_registry)
        for client in self.connections:
            client.reconfigure(settings)

    def report_stats(self) -> None:
        if self.link is None:
            return
        status = {"kafka": self.kafka.status(), "accepting": self.accepting,
                  "subscriptions": self.subscriptions.total + self.options.index.total,
                  "warmup": self.warmup.status(),
                  "outbound_native": self.native.state}
        if self.schemas is not None:
            status["registry"] = self.schemas.status()
        self.link.callRemote(commands.Stats, connections=len(self.connections),
                             capacity=self.capacity, status=json.dumps(status).encode())

    def drain(self, window: float) -> defer.Deferred[int]:
        """
        Stop accepting, then close every client with 4000 ("server
        restarting, reconnect with jitter"), the closes spread evenly over
        C{window} seconds so clients do not all come back at once.
        """
        self.accepting = False
        return self.connections.close_all(window, CLOSE_RESTARTING,
                                          "server restarting, reconnect with jitter")

    # -- what the client transports ask of the shard (host.ClientHost and
    # the transports' extensions of it), each handed to its owner

    def admit_ip(self, ip: str) -> bool:
        return self.connections.admit_ip(ip)

    def release_ip(self, ip: str) -> None:
        self.connections.release_ip(ip)

    def connection_made(self, proto: Any) -> None:
        self.connections.made(proto)

    def replace_client(self, old: Any, new: Any) -> None:
        self.connections.replaced(old, new)

    def connection_lost(self, proto: Any) -> None:
        self.connections.lost(proto)

    def subscriptions_changed(self) -> None:
        metrics.SUBSCRIPTIONS.set(self.subscriptions.total + self.streams.index.total
                                  + self.streams.variants.total + self.options.index.total)

    def recovering(self, outbox: Outbox) -> None:
        self.delivery.stale.forget(outbox)


def _history_bounds(settings: Settings) -> dict[str, Any]:
    h = settings.history
    return {"max_events": h.max_events_per_partition, "max_age": h.max_age,
            "max_bytes": h.max_bytes, "max_channels": h.snapshot_channels}
