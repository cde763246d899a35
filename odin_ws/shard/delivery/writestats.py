"""
The write path's counters (L{WriteStats}): plain integers the fan-out's and
the outboxes' hot loops bump, exposed at scrape time by L{WriteStatsCollector}.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

#: The slow-client policies (C{outbound.policy}; L{odin_ws.shard.delivery.outbox.Outbox}).
POLICIES = ("drop", "conflate", "disconnect")
#: What became of a handshake's permessage-deflate offers (odin_ws/shard/clients/websocket.py):
#: accepted; declined (compression off, or only offers this server cannot
#: honour); invalid (malformed, declined too).
OFFER_RESULTS = ("accepted", "declined", "invalid")


class WriteStats:
    """
    Counters of one process's write path, as plain integers: the hot loop
    bumps them, L{WriteStatsCollector} reads them at scrape time.
    """

    def __init__(self) -> None:
        self.delivered = 0         # frames handed to the kernel or to Twisted
        self.bytes_out = 0         # their bytes
        self.writes = 0            # buffers written (one per connection per flush)
        self.direct = 0            # ... the kernel took all of it at once
        self.partial = 0           # ... the kernel took part, the rest went to Twisted
        self.buffered = 0          # ... all of it went to transport.write
        self.fallbacks = 0         # ... of those, a direct send was tried and refused
        self.dropped = dict.fromkeys(POLICIES, 0)  # frames dropped, by policy
        self.conflated = 0         # waiting frames replaced by a newer one of their channel
        self.slow_disconnects = 0  # connections closed under the disconnect policy
        self.high_water = 0        # most bytes one connection had waiting (Twisted + queue)
        self.fell_behind = 0       # times a connection fell behind (catch-up or streamed recovery)
        self.behind_now = 0        # connections behind now
        self.caught_up = 0         # events sent from history to connections that were behind
        self.fell_out = 0          # times a connection fell out of the history window
        self.gaps: dict[str, int] = {}  # streams named in gap notices, by reason
        self.deflated = 0          # event frames compressed (once per event and window size)
        self.deflate_plain = 0     # bytes of event frames handed to compressing connections ...
        self.deflate_wire = 0      # ... and the same frames' bytes as those connections got them
        self.offers = dict.fromkeys(OFFER_RESULTS, 0)  # permessage-deflate offers, by outcome


class WriteStatsCollector:
    """A C{prometheus_client} collector exposing a L{WriteStats}."""

    def __init__(self, stats: WriteStats):
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        s = self.stats
        for name, doc, value in (
                ("events_delivered", "Event frames written to clients.", s.delivered),
                ("outbound_bytes", "Event bytes written to clients.", s.bytes_out),
                ("events_conflated", "Waiting event frames replaced by a newer one of "
                 "their channel.", s.conflated),
                ("slow_disconnects", "Connections closed (4008) under the disconnect "
                 "policy.", s.slow_disconnects),
                ("events_caught_up", "Events sent from history to connections that had "
                 "fallen behind (catch-up and streamed recoveries).", s.caught_up),
                ("connections_fell_behind", "Times a connection fell behind: its buffer "
                 "was full, or a recovery was streamed.", s.fell_behind),
                ("connections_fell_out", "Times a connection fell out of the history "
                 "window while behind (told by a gap notice, too_old).", s.fell_out),
                ("outbound_deflated_frames", "Event frames compressed (permessage-deflate): "
                 "once per event and server window size, not per connection.", s.deflated)):
            yield CounterMetricFamily("odinws_" + name, doc, value=value)
        yield GaugeMetricFamily("odinws_outbound_buffer_high_water_bytes", "Most bytes "
                                "one connection had waiting, since start.", value=s.high_water)
        yield GaugeMetricFamily("odinws_connections_behind", "Connections catching up from "
                                "history now.", value=s.behind_now)
        yield labelled("odinws_gaps_notified", "Streams named in gap notices sent to "
                       "clients, by reason.", "reason", {r: s.gaps[r] for r in sorted(s.gaps)})
        yield labelled("odinws_events_dropped", "Event frames dropped for slow clients, by "
                       "policy.", "policy", s.dropped)
        yield labelled("odinws_outbound_deflate_bytes", "Bytes of the event frames handed to "
                       "connections that negotiated permessage-deflate: stage plain as "
                       "uncompressed frames, wire as sent (smaller ones compressed).", "stage",
                       {"plain": s.deflate_plain, "wire": s.deflate_wire})
        yield labelled("odinws_deflate_offers", "WebSocket handshakes offering "
                       "permessage-deflate, by outcome: accepted, declined (compression off "
                       "or no offer this server can honour), invalid (malformed: declined "
                       "too).", "result", s.offers)
        yield labelled("odinws_writes", "Buffers written to connections, by path: direct "
                       "(socket.send took all), partial (the rest went to Twisted), buffered "
                       "(all via Twisted).", "path",
                       {"direct": s.direct, "partial": s.partial, "buffered": s.buffered})


def labelled(name: str, doc: str, label: str, values: dict[str, int]) -> CounterMetricFamily:
    """A counter family with one sample per C{values} entry, labelled C{label}."""
    family = CounterMetricFamily(name, doc, labels=[label])
    for key, value in values.items():
        family.add_metric([key], value)
    return family
