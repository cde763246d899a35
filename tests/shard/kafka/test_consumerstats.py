"""
Unit tests of L{odin_ws.shard.kafka.consumerstats}: what a shard's Kafka
status says from librdkafka's statistics (a broker not answering, brokers
down, each topic's partitions).
"""

from __future__ import annotations

import json

from confluent_kafka import KafkaError
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from odin_ws.common.events import Partition
from odin_ws.shard.kafka.ingest import KafkaIngest
from tests.helpers import sample
from tests.helpers.kafkafakes import ThreadlessReactor, broker, make_settings, stats


class UnresponsiveBrokerTests(SynchronousTestCase):
    """
    A broker that accepts connections but answers nothing (issue 16): librdkafka
    keeps it "UP" for minutes, the status must not.
    """

    def setUp(self):
        self.reactor = ThreadlessReactor()
        self.logged: list[dict] = []
        globalLogPublisher.addObserver(self.logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.logged.append)
        # session 2 s: a broker silent for 2 s with requests waiting is hung.
        settings = make_settings("b:1", "t", "g", **{"kafka.session_timeout_ms": 2000,
                                                     "kafka.max_poll_interval_ms": 4000})
        self.ingest = KafkaIngest(self.reactor, settings, 0, None, None)
        self.connected = sample("odinws_kafka_connected")

    def test_silentBrokerWithRequestsWaiting(self):
        """
        A broker with requests waiting and nothing received for a session
        timeout makes the status unresponsive and not connected (and the
        metric 0), with a warning naming it; once it answers again the
        consumer is running and connected.
        """
        self.assertEqual(self.ingest.unanswered_after, 2.0)
        self.ingest._on_stats(stats(broker(rxidle_s=0.5)))
        self.assertEqual((self.ingest.status()["state"], self.ingest.status()["connected"]),
                         ("running", True))
        self.ingest._on_stats(stats(broker(rxidle_s=2.5, waiting=3)))
        status = self.ingest.status()
        self.assertEqual((status["state"], status["connected"]), ("unresponsive", False))
        self.assertIn("127.0.0.1:9092 has not answered for 2s (3 requests waiting)",
                      status["last_error"])
        self.assertEqual(sample("odinws_kafka_connected"), 0)
        self.assertTrue(any("not answering" in formatEvent(e) for e in self.logged))
        self.ingest.broker_reached()  # records from elsewhere do not hide it
        self.assertFalse(self.ingest.status()["connected"])
        self.ingest._on_stats(stats(broker(rxidle_s=0.0)))
        self.assertEqual((self.ingest.status()["state"], self.ingest.status()["connected"]),
                         ("running", True))
        self.assertEqual(sample("odinws_kafka_connected"), 1)

    def test_pauseShownBeforeTheSessionEnds(self):
        """
        At the shipped 10 s session a broker that answers nothing (a pause)
        makes the status unresponsive after 3 s of silence with requests
        waiting (fetches are answered within fetch_wait_max_ms), not after
        the session: /health says it while the pause lasts. 2.5 s is not
        yet a pause.
        """
        ingest = KafkaIngest(self.reactor, make_settings("b:1", "t", "g"), 0, None, None)
        ingest._on_stats(stats(broker(rxidle_s=2.5, waiting=1)))
        self.assertEqual((ingest.status()["state"], ingest.status()["connected"]),
                         ("running", True))
        ingest._on_stats(stats(broker(rxidle_s=3.5, waiting=1)))
        self.assertEqual((ingest.status()["state"], ingest.status()["connected"]),
                         ("unresponsive", False))

    def test_idleOrCoordinatorIsNotHung(self):
        """
        Silence with nothing waiting (no assignment, nothing to fetch) and a
        group coordinator holding a JoinGroup during a rebalance are normal.
        """
        self.ingest._on_stats(stats(broker(rxidle_s=30, waiting=0),
                                    broker("GroupCoordinator", source="logical", rxidle_s=30)))
        self.assertEqual((self.ingest.status()["state"], self.ingest.status()["connected"]),
                         ("running", True))

    def test_statisticsStop(self):
        """
        When statistics stop coming (the consumer thread is stuck), the
        status stops saying connected after the bound plus three intervals.
        """
        self.ingest._on_stats(stats(broker()))
        self.reactor.advance(2.0 + 3 * 0.5 - 0.1)  # make_settings: statistics every 0.5 s
        self.assertTrue(self.ingest.status()["connected"])
        self.reactor.advance(0.2)
        status = self.ingest.status()
        self.assertEqual((status["state"], status["connected"]), ("unresponsive", False))
        self.assertIn("no consumer statistics", status["last_error"])
        self.ingest._on_stats(stats(broker()))
        self.assertTrue(self.ingest.status()["connected"])


class StatusTruthTests(SynchronousTestCase):
    """The consumer's status says what holds now, and for how long it has not connected."""

    def setUp(self):
        self.reactor = ThreadlessReactor()
        self.ingest = KafkaIngest(self.reactor, make_settings("b:1", "t", "g"), 0, None, None)

    def test_disconnectedFor(self):
        """
        Never connected: counted from the start; connected: 0; after losing
        the broker: counted from when it was last seen.
        """
        self.reactor.advance(7)
        self.assertEqual(self.ingest.status()["disconnected_for"], 7.0)
        self.ingest._on_stats(stats(broker()))
        self.assertEqual(self.ingest.status()["disconnected_for"], 0.0)
        self.reactor.advance(1)
        self.ingest._on_stats(stats(broker(state="DOWN")))
        self.reactor.advance(4)
        self.assertEqual(self.ingest.status()["disconnected_for"], 5.0)

    def test_unassignedFor(self):
        """
        Without partitions: counted from the start; holding some: 0; after
        losing them all (a rebalance, a stalled group): counted from then.
        """
        self.reactor.advance(3)
        self.assertEqual(self.ingest.status()["unassigned_for"], 3.0)
        self.ingest.publish_assignment(frozenset({Partition("t", 0)}))
        self.reactor.advance(10)
        self.assertEqual(self.ingest.status()["unassigned_for"], 0.0)
        self.ingest.publish_assignment(frozenset())
        self.reactor.advance(6)
        self.ingest.publish_assignment(frozenset())
        self.assertEqual(self.ingest.status()["unassigned_for"], 6.0)

    def test_errorClearedWhenItNoLongerHolds(self):
        """
        A connection error stays while retrying and is cleared when the
        consumer runs again (one reported once running does not become the
        status's); an error while running (a topic not there yet) is
        cleared when partitions are assigned, not before.
        """
        self.ingest._on_stats(stats(broker()))
        self.ingest._on_stats(stats(broker(state="DOWN")))
        self.ingest.on_error(KafkaError(KafkaError._ALL_BROKERS_DOWN, "1/1 brokers are down"))
        self.assertEqual(self.ingest.status()["last_error"], "1/1 brokers are down")
        self.ingest._on_stats(stats(broker()))
        self.assertIsNone(self.ingest.status()["last_error"])
        # A connection error reported once running (a late report of the
        # outage, one broker of several) is counted, not the status.
        before = sample("odinws_kafka_errors_total", kind="transport")
        self.ingest.on_error(KafkaError(KafkaError._TRANSPORT, "b:1/bootstrap: Connect failed"))
        self.assertIsNone(self.ingest.status()["last_error"])
        self.assertEqual(sample("odinws_kafka_errors_total", kind="transport"), before + 1)
        self.ingest.note_error("unknown_topic_or_part", "Subscribed topic not available: t")
        self.ingest.publish_missing(frozenset({"t"}))
        self.ingest.publish_assignment(frozenset())
        self.assertEqual(self.ingest.status()["last_error"], "Subscribed topic not available: t")
        self.assertEqual(self.ingest.status()["missing_topics"], ["t"])
        self.ingest.publish_missing(frozenset())
        self.ingest.publish_assignment(frozenset({Partition("t", 0)}))
        status = self.ingest.status()
        self.assertEqual((status["last_error"], status["missing_topics"]), (None, []))


class TopicsStatusTests(SynchronousTestCase):
    """What a shard reports of its topics for the parent's coverage check (parent/coverage.py)."""

    def test_partitionCountsFromStatistics(self):
        """
        Each configured topic's partition count comes from the consumer's
        statistics (its own metadata: every partition of a topic it holds
        some of, and librdkafka's internal -1), with the partitions held
        here; topics not configured are left out.
        """
        ingest = KafkaIngest(ThreadlessReactor(), make_settings("b:1", "t", "g"), 0, None, None)
        ingest.publish_assignment(frozenset({Partition("t", 1)}))
        ingest._on_stats(json.dumps({"brokers": {}, "topics": {
            "t": {"partitions": {"-1": {}, "0": {}, "1": {}, "2": {}, "3": {}}},
            "other": {"partitions": {"0": {}}}}}))
        self.assertEqual(ingest.status()["topics"], {"t": {"partitions": 4, "assigned": [1]}})

    def test_rejoinOnlyWhileConsuming(self):
        """
        The parent's rejoin request reaches the consumer thread (an event it
        polls) only while a consumer runs; a stopped ingest says it cannot.
        """
        ingest = KafkaIngest(ThreadlessReactor(), make_settings("b:1", "t", "g"), 0, None, None)
        self.assertFalse(ingest.rejoin())
        self.assertFalse(ingest._rejoin.is_set())
