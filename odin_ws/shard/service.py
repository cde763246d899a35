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

from twisted.application import service
from twisted.internet import defer, protocol, task
from twisted.logger import Logger
from twisted.protocols import amp

from odin_ws.common import commands, handoff, metrics, openfiles
from odin_ws.common.config import Config, ConfigError, apply_live
from odin_ws.common.events import Event, Partition, decode_batch, encode_batch
from odin_ws.common.highwater import HighWater
from odin_ws.common.logs import install_logging
from odin_ws.common.settings import Settings
from odin_ws.shard import auth, tls
from odin_ws.shard.fanout import Fanout, WriteStats, WriteStatsCollector, limit_unsent
from odin_ws.shard.frames import text_frame
from odin_ws.shard.history import History, HistoryCollector
from odin_ws.shard.ingest import KafkaIngest
from odin_ws.shard.jwks import RemoteJwks
from odin_ws.shard.protocol import CLOSE_RESTARTING, ClientFactory, ClientProtocol
from odin_ws.shard.records import RecordMapper
from odin_ws.shard.ssefeed import Streams
from odin_ws.shard.subscriptions import SubscriptionIndex
from odin_ws.shard.warmup import HistoryWarmup, WarmedPartition, WarmupReport, WarmupState


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
        self.shard.deliver(decode_batch(batch))
        return {}

    @commands.GetMetrics.responder
    def get_metrics(self):
        return {"text": metrics.exposition()}

    @commands.Reload.responder
    def reload(self, config):
        self.shard.reload(Config.from_json(config.decode()))
        return {}

    @commands.Drain.responder
    def drain(self, window):
        return self.shard.drain(window).addCallback(lambda n: {"closed": n})


class Shard(service.MultiService):
    """A shard process's service tree: control channel, Kafka, WebSocket clients."""

    log = Logger()

    def __init__(self, reactor, config: Config, number: int, control_fd: int | None = 3):
        super().__init__()
        self.reactor = reactor
        #: Every setting, typed; replaced as a whole by L{reconfigure}.
        self.settings = settings = Settings.from_config(config)
        self.number = number
        self.control_fd = control_fd
        self.subscriptions = SubscriptionIndex(settings.limits)
        self.stats = WriteStats()
        self.fanout = Fanout(reactor, self.stats, settings.outbound.flush_delay)
        self.factory = ClientFactory(self)
        #: The shard's Server-Sent Events streams (odin_ws/shard/sse.py).
        self.streams = Streams(self)
        self.clients: set[ClientProtocol] = set()
        self.accepting = True
        self.link: ParentLink | None = None
        # Highest offset seen per (topic, partition) from any source, so a
        # partition re-read after a rebalance is not delivered twice (reset
        # when the partition's log is a new one: see HighWater).
        self.seen = HighWater(f"shard {number}")
        #: Recent events of every partition, for recovery and snapshots.
        self.history = History(clock=time.time, **_history_bounds(settings))
        #: The keys of auth.jwks_url, kept across reloads (idle without one).
        self.jwks = RemoteJwks(reactor, settings.auth)
        self.verifier = auth.Verifier(settings.auth, self.jwks)
        self.tls_options = tls.server_options(settings.tls) if tls.enabled(settings.tls) else None
        self.per_ip: dict[str, int] = {}
        self._drained: defer.Deferred | None = None
        self.kafka = KafkaIngest(reactor, settings,
                                 RecordMapper.from_settings(settings.kafka),
                                 self.on_kafka_batch)
        self.kafka.setServiceParent(self)
        #: Reads the recent past back from Kafka at start (L{backfill}); what
        #: was produced before this moment (ms) is the past.
        self.started_ms = int(time.time() * 1000)
        self.warmup = HistoryWarmup(reactor, settings, RecordMapper.from_settings(settings.kafka),
                                    self.kafka.consumer_config(), self.backfill, self.warmed)
        self.warmup.setServiceParent(self)
        # Partitions whose marks the warm-up raised -> to which offset, until
        # this shard's consumer passes it (see _rereading); and the
        # assignment they were last checked against.
        self._rereads: dict[Partition, int] = {}
        self._rereads_assigned: frozenset[Partition] | None = None
        # Connections the open-files limit leaves room for (set at start).
        self._fd_room: int | None = None
        self._stats_loop = task.LoopingCall(self.report_stats)
        self._stats_loop.clock = reactor
        self._collectors = [WriteStatsCollector(self.stats), HistoryCollector(
            self.history, lambda: self.settings.history.max_age)]

    # -- lifecycle

    def setServiceParent(self, parent):
        super().setServiceParent(parent)
        install_logging(self.settings.log, parent)

    def startService(self):
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
        self._stats_loop.start(self.settings.supervisor.stats_interval, now=False)

    def stopService(self):
        if self._stats_loop.running:
            self._stats_loop.stop()
        for client in list(self.clients):
            if client.outbox is not None:
                client.outbox.close()   # nothing more goes out on an aborted socket
            client.transport.abortConnection()
        for collector in self._collectors:
            metrics.REGISTRY.unregister(collector)
        metrics.GC_PAUSES.unwatch()
        return defer.gatherResults([self.jwks.stop(), defer.maybeDeferred(super().stopService)])

    def link_made(self, link: ParentLink) -> None:
        self.link = link
        link.callRemote(commands.Register, index=self.number, pid=os.getpid(),
                         capacity=self.capacity).addErrback(
            lambda f: self.log.failure("registering with the parent", f))

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

    @property
    def capacity(self) -> int:
        """limits.max_connections_per_shard, or fewer if the open-files limit says so."""
        per_shard = self.settings.limits.max_connections_per_shard
        return per_shard if self._fd_room is None else min(per_shard, self._fd_room)

    def policy_for(self, event_type: str) -> str:
        """The slow-client policy of C{event_type} (C{outbound.policy}, live)."""
        policies = self.settings.outbound.policy
        return policies.get(event_type) or policies.get("default", "drop")

    # -- connections

    def adopt(self, fd: int, head: bytes, use_tls: bool) -> int:
        # Not named "tls": that would shadow the odin_ws.shard.tls module used below.
        if not self.accepting or len(self.clients) >= self.capacity:
            os.close(fd)
            raise commands.HandoffRefused("shard full or draining")
        if use_tls:
            if self.tls_options is None:
                os.close(fd)
                raise commands.HandoffRefused("TLS is not configured on this shard")
            handoff.adopt(self.reactor, fd, tls.wrap(self.tls_options, self.factory), head)
        else:
            handoff.adopt(self.reactor, fd, self.factory, head)
        return len(self.clients)

    def ip_admit(self, proto: ClientProtocol) -> bool:
        """Count the client's IP; False if it already holds its share."""
        ip = proto.client_ip
        held = self.per_ip.get(ip, 0)
        if held >= self.settings.limits.max_connections_per_ip:
            return False
        self.per_ip[ip] = held + 1
        proto.ip_counted = True
        return True

    def reload(self, new: Config) -> None:
        """Apply the settings that may change live; keep the rest until restart."""
        applied, live, _ = apply_live(self.settings.config, new)
        settings = Settings.from_config(applied)
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
        the shard itself, its client factory (for new connections) and
        every connection (its outbox limits, its message rate).
        """
        self.settings = settings
        self.history.configure(**_history_bounds(settings))
        self.fanout.reconfigure(settings.outbound.flush_delay)
        self.factory.reconfigure(settings)
        self.subscriptions.reconfigure(settings.limits)
        for client in self.clients:
            client.reconfigure(settings)

    def connection_made(self, proto: ClientProtocol) -> None:
        limit_unsent(proto.transport, self.settings.outbound.kernel_unsent_bytes)
        self.clients.add(proto)
        metrics.CONNECTIONS.set(len(self.clients))

    def replace_client(self, old: ClientProtocol, new) -> None:
        """C{new} serves the connection C{old} was made for (an SSE stream's take-over)."""
        self.clients.discard(old)
        self.clients.add(new)

    def connection_lost(self, proto: ClientProtocol) -> None:
        self.clients.discard(proto)
        if proto.ip_counted:
            left = self.per_ip.get(proto.client_ip, 1) - 1
            if left > 0:
                self.per_ip[proto.client_ip] = left
            else:
                self.per_ip.pop(proto.client_ip, None)
        metrics.CONNECTIONS.set(len(self.clients))
        if self._drained is not None and not self.clients:
            d, self._drained = self._drained, None
            d.callback(None)

    def subscriptions_changed(self) -> None:
        metrics.SUBSCRIPTIONS.set(self.subscriptions.total + self.streams.index.total)

    def report_stats(self) -> None:
        if self.link is None:
            return
        status = {"kafka": self.kafka.status(), "accepting": self.accepting,
                  "subscriptions": self.subscriptions.total, "warmup": self.warmup.status()}
        self.link.callRemote(commands.Stats, connections=len(self.clients),
                             capacity=self.capacity, status=json.dumps(status).encode())

    def drain(self, window: float) -> defer.Deferred:
        """
        Stop accepting, then close every client with 4000 ("server
        restarting, reconnect with jitter"), the closes spread evenly over
        C{window} seconds so clients do not all come back at once.
        """
        self.accepting = False
        clients = list(self.clients)
        count = len(clients)
        if not clients:
            return defer.succeed(0)
        d = defer.Deferred()
        self._drained = d
        step = window / count if window > 0 else 0
        for i, client in enumerate(clients):
            self.reactor.callLater(i * step, client.sendClose, CLOSE_RESTARTING,
                                   "server restarting, reconnect with jitter")
        return d.addCallback(lambda _: count)

    # -- events

    def _fresh(self, events: list[Event]) -> list[Event]:
        return self.seen.fresh(events)

    def on_kafka_batch(self, events: list[Event]):
        """A batch this shard consumed: deliver here, relay to the others."""
        relay = events if self._rereads and self._rereading(events) else None
        events = self._fresh(events)
        if events:
            self._deliver(events)
        if relay is None:
            relay = events
        if not relay or self.link is None:
            return None
        return self.link.callRemote(commands.Publish, batch=encode_batch(relay))

    def _rereading(self, events: list[Event]) -> bool:
        """
        Whether the batch re-reads offsets the warm-up counted as seen here.
        Such a batch is relayed whole all the same: another shard's warm-up
        may have stopped short of them (each took its own high watermark),
        and the hub drops what it relayed before.
        """
        rereads = self._rereads
        assigned = self.kafka.assigned
        if assigned is not self._rereads_assigned:
            # Partitions this consumer does not read: their owner relays them.
            self._rereads_assigned = assigned
            for key in [k for k in rereads if k not in assigned]:
                del rereads[key]
        found = False
        for e in events:
            key = (e.topic, e.partition)
            until = rereads.get(key)
            if until is not None:
                if e.offset <= until:
                    found = True
                else:
                    del rereads[key]   # the consumer is past what the warm-up read
        return found

    def deliver(self, events: list[Event]) -> None:
        """A batch another shard consumed, relayed by the hub."""
        self._deliver(self._fresh(events), relayed=True)

    def _deliver(self, events: list[Event], relayed: bool = False) -> None:
        subscriptions = self.subscriptions
        fanout = self.fanout
        delivered = []
        # Consecutive events reaching the same subscribers (match hands out
        # the same object for the same bucket) go out as one run: framed
        # and joined once, one queue entry per subscriber.
        run: list = []
        run_to = None
        remember = self.history.add
        # Older than outbound.max_event_age: kept for recovery, not sent live.
        max_age = self.settings.outbound.max_event_age
        cutoff = (time.time() - max_age) * 1000.0 if max_age > 0 else -1.0
        stale = 0
        # SSE streams get their own message of each event, built once
        # (odin_ws/shard/sse.py); None while no stream is open.
        streams = self.streams.feed()
        for e in events:
            remember(e)
            if e.ts < cutoff:
                stale += 1
                continue
            subscribers = subscriptions.match(e.token, e.event_type)
            if streams is not None and streams.offer(e) and not subscribers:
                delivered.append(e)
                continue
            if not subscribers:
                continue
            delivered.append(e)
            if subscribers is not run_to and run:
                fanout.publish_run(run, run_to)
                run = []
            run_to = subscribers
            run.append((text_frame(e.envelope), e.channel, e.event_type))
        if run:
            fanout.publish_run(run, run_to)
        if stale:
            metrics.EVENTS_STALE.inc(stale)
        if streams is not None:
            streams.finish()
        written = fanout.flush()
        if delivered:
            if written:
                _observe_latency(delivered, relayed)
            else:   # a flush window (outbound.flush_delay) is open: measured at its end
                fanout.after_flush(lambda: _observe_latency(delivered, relayed))

    # -- warm-up (odin_ws/shard/warmup.py)

    def backfill(self, warmed: WarmedPartition) -> None:
        """
        What the warm-up read back of one partition. It joins the history only
        where it meets what live delivery brought meanwhile (its own consumer's
        and the hub's); then the shard counts every offset it read as seen, so
        the group consumer's re-read of them (a restarted node resumes from its
        committed offsets) is not delivered again as live: clients that missed
        them recover them. Events produced since this shard started, and those
        past what live delivery brought already, are delivered now, as live
        delivery would have: in order, once. Where live delivery is behind with
        a gap, or knows another incarnation of the topic, the backfill is left
        out.
        """
        key = Partition(warmed.topic, warmed.partition)
        events = warmed.events
        through = warmed.through
        metrics.HISTORY_WARMED.inc(len(events))
        mark = self.seen.marks.get(key)
        if mark is not None:
            epoch, high = mark
            if epoch != warmed.epoch or high < warmed.start - 1:
                return
            live = next((i for i, e in enumerate(events) if e.offset > high), len(events))
        else:
            live = next((i for i, e in enumerate(events) if e.ts >= self.started_ms),
                        len(events))
        past, now = events[:live], events[live:]
        if past:
            self.history.backfill(past, {key: now[0].offset - 1 if now else through})
        if now:
            self._deliver(self._fresh(now))
        if self.seen.raise_to(warmed.topic, warmed.partition, warmed.epoch, through) or now:
            self._rereads[key] = through

    def warmed(self, report: WarmupReport) -> None:
        """The warm-up ended: one line."""
        if report.state is WarmupState.DONE:
            self.log.info("history warmed: {events} events of {partitions} partitions in "
                          "{seconds:.1f} s{cut}", events=report.events,
                          partitions=report.partitions, seconds=report.seconds,
                          cut=(f" ({report.incomplete} read in part: history.warmup_timeout)"
                               if report.incomplete else ""))
        elif report.state is WarmupState.FAILED:
            self.log.warn("history warm-up failed after {seconds:.1f} s ({error}); "
                          "{events} events of {partitions} partitions warmed",
                          seconds=report.seconds, error=report.error, events=report.events,
                          partitions=report.partitions)


def _observe_latency(delivered: list[Event], relayed: bool) -> None:
    """
    End to end, and odinws's own share: consumed (by this shard or,
    relayed, by another) to written to the last subscriber's socket.
    """
    now = time.time()
    end_to_end = metrics.DELIVERY_LATENCY.observe
    own = (metrics.OWN_LATENCY_RELAYED if relayed else metrics.OWN_LATENCY_LOCAL).observe
    for e in delivered:
        end_to_end(max(0.0, now - e.ts / 1000.0))
        if e.consumed:
            own(max(0.0, now - e.consumed))


def _history_bounds(settings: Settings) -> dict:
    h = settings.history
    return {"max_events": h.max_events_per_partition, "max_age": h.max_age,
            "max_bytes": h.max_bytes, "max_channels": h.snapshot_channels}
