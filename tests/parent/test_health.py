"""
Tests for L{odin_ws.parent.health}: when /health says 503 (the node cannot
deliver) and when 200 with a degradation named, from the shards' reports.
"""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from odin_ws.parent.health import Health
from tests.helpers.cases import make_settings

TOPICS = {"odin.trades": "trade", "odin.prices": "price"}


class Door:
    """The node's door as /health reads it: open, started, not overloaded."""

    accepting, starting, overloaded = True, False, False


def kafka(connected: bool = True, disconnected_for: float = 0.0, missing: tuple = (),
          error: str | None = None, unassigned_for: float | None = None) -> dict[str, Any]:
    """A shard's Kafka status; C{unassigned_for}: connected but holding no partition."""
    assigned = connected and unassigned_for is None
    return {"state": "running" if connected else "retrying", "connected": connected,
            "assigned": ["odin.trades[0]"] if assigned else [], "lag": 0,
            "last_error": error, "missing_topics": list(missing),
            "disconnected_for": 0.0 if connected else disconnected_for,
            "unassigned_for": 0.0 if assigned else (unassigned_for or disconnected_for)}


class Shard:
    """A shard handle's /health entry, with a Kafka and warm-up status."""

    def __init__(self, index: int, kafka: dict | None, warmup: str = "done",
                 incomplete: int = 0, alive: bool = True, late: dict | None = None):
        self.entry = {"index": index, "alive": alive, "accepting": alive, "connections": 0,
                      "capacity": 100, "kafka": kafka,
                      "warmup": {"state": warmup, "incomplete": incomplete, "late": late}}

    def as_health(self) -> dict:
        return self.entry


class HealthTests(SynchronousTestCase):

    def health(self, *shards: Shard, **settings: Any) -> tuple[int, dict]:
        s = make_settings(**{"kafka__topics": TOPICS, "kafka__unreachable_grace": 15.0,
                             **settings})
        return Health(s, lambda: list(shards), Door())()

    def test_ok(self):
        """Every shard consuming, history warm: 200 ok, nothing degraded, no reason."""
        status, body = self.health(Shard(0, kafka()), Shard(1, kafka()))
        self.assertEqual((status, body["status"], body["degraded"]), (200, "ok", []))
        self.assertNotIn("reason", body)
        self.assertTrue(body["kafka_connected"])

    def test_kafka_unreachable_beyond_grace(self):
        """
        No shard has reached a broker for longer than kafka.unreachable_grace:
        503 kafka_unreachable, the reason naming how long and the last error.
        """
        error = "127.0.0.1:9092/bootstrap: Connect to ipv4#127.0.0.1:9092 failed"
        status, body = self.health(Shard(0, kafka(False, 20.0, error=error)),
                                   Shard(1, kafka(False, 16.0)))
        self.assertEqual((status, body["status"]), (503, "kafka_unreachable"))
        self.assertEqual(body["reason"], f"no shard has reached a Kafka broker for 16s: {error}")
        self.assertFalse(body["accepting"])

    def test_kafka_blip_within_grace(self):
        """
        Within the grace (a broker restart) the node stays in rotation: 200,
        degraded kafka_disconnected; one shard still connected is never 503.
        """
        status, body = self.health(Shard(0, kafka(False, 14.0)), Shard(1, kafka(False, 30.0)))
        self.assertEqual((status, body["degraded"]), (200, ["kafka_disconnected"]))
        status, body = self.health(Shard(0, kafka(False, 300.0)), Shard(1, kafka()))
        self.assertEqual((status, body["degraded"]), (200, ["kafka_disconnected"]))
        self.assertTrue(body["kafka_connected"])

    def test_grace_is_a_setting(self):
        """kafka.unreachable_grace decides: 0 makes any outage a 503."""
        status, body = self.health(Shard(0, kafka(False, 1.0)), kafka__unreachable_grace=0.0)
        self.assertEqual((status, body["status"]), (503, "kafka_unreachable"))

    def test_shard_without_report_is_not_judged(self):
        """A shard that has not reported its Kafka status yet does not make the node 503."""
        status, body = self.health(Shard(0, None), Shard(1, kafka(False, 60.0)))
        self.assertEqual((status, body["degraded"]), (200, ["kafka_disconnected"]))

    def test_no_partition_beyond_grace(self):
        """
        Connected, yet no shard holds a partition for longer than
        kafka.unreachable_grace (a group stalled after a broker pause): the
        node reads nothing, so 503 unassigned, not 200 with kafka_connected.
        """
        status, body = self.health(Shard(0, kafka(unassigned_for=20.0)),
                                   Shard(1, kafka(unassigned_for=16.0)))
        self.assertEqual((status, body["status"]), (503, "unassigned"))
        self.assertTrue(body["reason"].startswith("no shard has been assigned a partition for 16s"))
        self.assertTrue(body["kafka_connected"])

    def test_no_partition_within_grace_is_degraded(self):
        """
        Within the grace (a rebalance) the node stays in rotation, degraded
        unassigned; one shard holding partitions is all well (a shard may
        hold none when there are more shards than partitions).
        """
        status, body = self.health(Shard(0, kafka(unassigned_for=5.0)),
                                   Shard(1, kafka(unassigned_for=30.0)))
        self.assertEqual((status, body["degraded"]), (200, ["unassigned"]))
        status, body = self.health(Shard(0, kafka(unassigned_for=60.0)), Shard(1, kafka()))
        self.assertEqual((status, body["degraded"]), (200, []))

    def test_every_topic_missing(self):
        """None of the configured topics exists: 503 topics_missing, naming them."""
        missing = ("odin.prices", "odin.trades")
        status, body = self.health(Shard(0, kafka(missing=missing)),
                                   Shard(1, kafka(missing=missing)))
        self.assertEqual((status, body["status"]), (503, "topics_missing"))
        self.assertEqual(body["reason"], "no configured topic is consumed, the brokers do not "
                                         "have them: odin.prices, odin.trades")
        self.assertEqual(body["missing_topics"], list(missing))

    def test_topic_missing_for_every_shard(self):
        """
        A topic counts as missing while every shard says so: once one shard
        was assigned partitions of it (the others may never be), it exists.
        """
        status, body = self.health(Shard(0, kafka(missing=("odin.prices", "odin.trades"))),
                                   Shard(1, kafka(missing=("odin.prices",))))
        self.assertEqual((status, body["missing_topics"]), (200, ["odin.prices"]))

    def test_some_topics_missing(self):
        """Some configured topics exist: the node delivers those, 200 degraded topics_missing."""
        status, body = self.health(Shard(0, kafka(missing=("odin.prices",))))
        self.assertEqual((status, body["degraded"], body["missing_topics"]),
                         (200, ["topics_missing"], ["odin.prices"]))

    def test_warming_when_recovery_is_promised(self):
        """
        Every shard still reading its history back (a node just started) while
        the history is kept: 503 warming, so reconnecting clients that want
        to recover go to a warm node. One shard warming (a restart): 200,
        degraded warming. A failed or cut warm-up: 200, degraded history_cold.
        """
        status, body = self.health(Shard(0, kafka(), "running"), Shard(1, kafka(), "running"))
        self.assertEqual((status, body["status"]), (503, "warming"))
        self.assertIn("reason", body)
        status, body = self.health(Shard(0, kafka(), "running"), Shard(1, kafka()))
        self.assertEqual((status, body["degraded"]), (200, ["warming"]))
        status, body = self.health(Shard(0, kafka(), "failed"), Shard(1, kafka(), incomplete=2))
        self.assertEqual((status, body["degraded"]), (200, ["history_cold"]))

    def test_late_warmups(self):
        """
        Partitions first assigned after the start, whose history a shard
        reads back now or next (their events wait meanwhile): 200, degraded
        warming_partitions, listed; once read, nothing. A late warm-up that
        failed or ran out of time: degraded history_cold, until a later one
        reads all it should.
        """
        reading = {"reading": ["odin.trades[2]"], "reading_for": 1.5,
                   "waiting": ["odin.trades[3]"], "waiting_for": 0.5, "runs": 0, "last": None}
        status, body = self.health(Shard(0, kafka(), late=reading), Shard(1, kafka()))
        self.assertEqual((status, body["degraded"], body["warming_partitions"]),
                         (200, ["warming_partitions"], ["odin.trades[2]", "odin.trades[3]"]))
        done = {"reading": [], "reading_for": None, "waiting": [], "waiting_for": None,
                "runs": 1, "last": {"state": "done", "incomplete": 0,
                                    "partitions": ["odin.trades[2]"], "ago": 3.0}}
        status, body = self.health(Shard(0, kafka(), late=done))
        self.assertEqual((status, body["degraded"], body["warming_partitions"]), (200, [], []))
        cut = dict(done, last=dict(done["last"], incomplete=1))
        failed = dict(done, last=dict(done["last"], state="failed"))
        for late in (cut, failed):
            status, body = self.health(Shard(0, kafka(), late=late))
            self.assertEqual((status, body["degraded"]), (200, ["history_cold"]))

    def test_late_warmup_overdue(self):
        """
        A late warm-up reading longer than twice history.warmup_timeout (a
        run stops at the timeout: one still reading is hung), or partitions
        waiting that long for one: still 200, degraded warmup_overdue, and
        overdue_warmups says which shard, which partitions, for how long.
        Short of it, only warming_partitions.
        """
        def reading(seconds: float) -> dict:
            return {"reading": ["odin.trades[2]"], "reading_for": seconds, "waiting": [],
                    "waiting_for": None, "runs": 0, "last": None}
        status, body = self.health(Shard(0, kafka(), late=reading(29.9)), Shard(1, kafka()))
        self.assertEqual((status, body["degraded"], body["overdue_warmups"]),
                         (200, ["warming_partitions"], []))
        status, body = self.health(Shard(0, kafka()), Shard(1, kafka(), late=reading(41.0)))
        self.assertEqual((status, body["status"], body["degraded"]),
                         (200, "ok", ["warming_partitions", "warmup_overdue"]))
        self.assertEqual(body["overdue_warmups"], [
            "shard 1 has been reading the history of odin.trades[2] back for 41s (a run stops "
            "at history.warmup_timeout, 15s): their events wait until it ends"])
        waiting = {"reading": [], "reading_for": None, "waiting": ["odin.trades[3]"],
                   "waiting_for": 31.0, "runs": 2, "last": None}
        status, body = self.health(Shard(0, kafka(), late=waiting))
        self.assertEqual((status, body["degraded"]), (200, ["warming_partitions", "warmup_overdue"]))
        self.assertEqual(body["overdue_warmups"], [
            "shard 0 has had odin.trades[3] wait 31s for a history warm-up to start: their "
            "events wait until it ends"])

    def test_late_warmup_overdue_follows_the_timeout(self):
        """
        The bound is twice history.warmup_timeout (5 s at least, for a short
        timeout's last request and close): 12 s of reading is overdue with
        a 5 s timeout, and 4 s is not with a 1 s one.
        """
        late = {"reading": ["odin.trades[2]"], "reading_for": 12.0, "waiting": [],
                "waiting_for": None, "runs": 0, "last": None}
        _, body = self.health(Shard(0, kafka(), late=late), history__warmup_timeout=5.0)
        self.assertIn("warmup_overdue", body["degraded"])
        _, body = self.health(Shard(0, kafka(), late=dict(late, reading_for=4.0)),
                              history__warmup_timeout=1.0)
        self.assertEqual((body["degraded"], body["overdue_warmups"]), (["warming_partitions"], []))

    def test_no_warming_503_without_recovery(self):
        """With no history kept (history.max_events_per_partition 0) nothing is promised."""
        status, _ = self.health(Shard(0, kafka(), "running"),
                                history__max_events_per_partition=0)
        self.assertEqual(status, 200)

    def test_shard_down(self):
        """A dead shard while others deliver: 200, degraded shards_down."""
        status, body = self.health(Shard(0, kafka()), Shard(1, None, alive=False))
        self.assertEqual((status, body["degraded"]), (200, ["shards_down"]))

    def test_draining_comes_first(self):
        """Draining wins over every delivery problem, with its own reason."""
        class Draining(Door):
            accepting = False
        s = make_settings(kafka__topics=TOPICS)
        status, body = Health(s, lambda: [Shard(0, kafka(False, 99.0))], Draining())()
        self.assertEqual((status, body["status"]), (503, "draining"))
        self.assertTrue(body["reason"])
