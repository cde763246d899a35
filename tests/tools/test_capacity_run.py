"""
Tests for L{odinws_tools.capacity_run}'s planning: the node's connection
limits scale with C{--connections}, and more shards are started when one
could not hold its share under the open-files hard limit.
"""

from twisted.trial.unittest import SynchronousTestCase

from odin_ws.common import openfiles
from odinws_tools import capacity_run


class PlanTests(SynchronousTestCase):
    def test_default_is_the_12k_run(self):
        """12,000 connections on two shards keep the settings of the documented run."""
        s = capacity_run.capacity_settings(12000, 2)
        self.assertEqual((s["limits.max_connections"], s["limits.max_connections_per_shard"]),
                         (14000, 8000))
        self.assertEqual(capacity_run.plan_shards(12000, 0, hard=20000), 2)

    def test_40k_needs_a_third_shard_under_20k_files(self):
        """With a hard limit of 20,000, two shards cannot hold 40,000 (+10%): three are used."""
        self.assertEqual(capacity_run.plan_shards(40000, 0, hard=20000), 3)
        self.assertEqual(capacity_run.plan_shards(40000, 0, hard=1 << 20), 2)
        s = capacity_run.capacity_settings(40000, 3)
        self.assertGreaterEqual(s["limits.max_connections"], 40000)
        self.assertLessEqual(s["limits.max_connections_per_shard"],
                             openfiles.connection_room(20000))
        self.assertEqual(s["limits.max_connections_per_ip"], s["limits.max_connections"])

    def test_more_shards_asked_are_kept(self):
        """An explicit --shards above what the limit needs is used as is."""
        self.assertEqual(capacity_run.plan_shards(12000, 4, hard=20000), 4)
