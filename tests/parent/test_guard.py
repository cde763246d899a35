"""Tests for L{odin_ws.parent.guard}: cgroup budgets, sampling and the door."""

import os
import resource

from twisted.internet.task import Clock
from twisted.trial import unittest

from odin_ws.parent import guard
from tests.helpers import FakeRoot, make_settings


class BudgetTests(unittest.TestCase):
    def setUp(self):
        self.root = FakeRoot(self.mktemp())
        self.root.write("proc/meminfo", "MemTotal:       24000000 kB\nMemFree: 1 kB\n")

    def test_cgroup2_limits(self):
        """A cgroup v2 cpu.max quota and memory.max are the budget."""
        self.root.write("proc/self/cgroup", "0::/system.slice/odinws.service\n")
        self.root.write("sys/fs/cgroup/cgroup.controllers", "cpu memory\n")
        self.root.write("sys/fs/cgroup/system.slice/odinws.service/cpu.max", "150000 100000\n")
        self.root.write("sys/fs/cgroup/system.slice/odinws.service/memory.max", "2147483648\n")
        budget = guard.read_budget(self.root.path)
        self.assertEqual(budget.source, "cgroup2")
        self.assertEqual(budget.cpus, min(1.5, len(os.sched_getaffinity(0))))
        self.assertEqual(budget.memory, 2147483648)

    def test_cgroup2_unlimited(self):
        """'max' in cgroup v2 means the host's CPUs and memory."""
        self.root.write("proc/self/cgroup", "0::/\n")
        self.root.write("sys/fs/cgroup/cgroup.controllers", "cpu memory\n")
        self.root.write("sys/fs/cgroup/cpu.max", "max 100000\n")
        self.root.write("sys/fs/cgroup/memory.max", "max\n")
        budget = guard.read_budget(self.root.path)
        self.assertEqual(budget.cpus, float(len(os.sched_getaffinity(0))))
        self.assertEqual(budget.memory, 24000000 * 1024)

    def test_cgroup1_limits(self):
        """cgroup v1 CFS quota/period and memory.limit_in_bytes are the budget."""
        self.root.write("proc/self/cgroup",
                        "4:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n1:name=systemd:/x\n")
        self.root.write("sys/fs/cgroup/cpu/docker/abc/cpu.cfs_quota_us", "50000\n")
        self.root.write("sys/fs/cgroup/cpu/docker/abc/cpu.cfs_period_us", "100000\n")
        self.root.write("sys/fs/cgroup/memory/docker/abc/memory.limit_in_bytes", "536870912\n")
        budget = guard.read_budget(self.root.path)
        self.assertEqual(budget.source, "cgroup1")
        self.assertEqual(budget.cpus, 0.5)
        self.assertEqual(budget.memory, 536870912)

    def test_cgroup1_unlimited(self):
        """A v1 quota of -1 and the huge 'no limit' memory value mean the host."""
        self.root.write("proc/self/cgroup", "4:memory:/\n3:cpu,cpuacct:/\n")
        self.root.write("sys/fs/cgroup/cpu/cpu.cfs_quota_us", "-1\n")
        self.root.write("sys/fs/cgroup/cpu/cpu.cfs_period_us", "100000\n")
        self.root.write("sys/fs/cgroup/memory/memory.limit_in_bytes", "9223372036854771712\n")
        budget = guard.read_budget(self.root.path)
        self.assertEqual(budget.memory, 24000000 * 1024)
        self.assertEqual(budget.cpus, float(len(os.sched_getaffinity(0))))

    def test_no_cgroup(self):
        """Without cgroup files the host is the budget."""
        budget = guard.read_budget(self.root.path)
        self.assertEqual(budget.source, "host")
        self.assertEqual(budget.memory, 24000000 * 1024)


class GuardTests(unittest.TestCase):
    def setUp(self):
        self.root = FakeRoot(self.mktemp())
        self.clock = Clock()
        self.set_usage(ticks=0, pages=100)
        budget = guard.Budget(1.0, 1000 * os.sysconf("SC_PAGE_SIZE"), "host")
        settings = make_settings(guard__cpu_threshold=0.8, guard__memory_threshold=0.5,
                                 guard__interval=1.0)
        self.g = guard.Guard(self.clock, lambda: [42], budget, settings, root=self.root.path)

    def set_usage(self, ticks: int, pages: int) -> None:
        # Fields after the command: state ppid ... utime(14th overall) stime(15th).
        fields = ["S"] + ["0"] * 10 + [str(ticks), "0"] + ["0"] * 30
        self.root.write("proc/42/stat", "42 (python (odinws)) " + " ".join(fields) + "\n")
        self.root.write("proc/42/statm", f"999 {pages} 0 0 0 0 0\n")

    def test_memory_closes_and_reopens(self):
        """Over the memory threshold the door closes; it reopens only below threshold - margin."""
        self.g.sample()
        self.assertTrue(self.g.accepting)
        self.set_usage(0, 600)
        self.g.sample()
        self.assertFalse(self.g.accepting)
        self.assertEqual(self.g.as_health()["reason"], "memory")
        self.set_usage(0, 480)  # below 0.5 but within the margin
        self.g.sample()
        self.assertFalse(self.g.accepting)
        self.set_usage(0, 400)
        self.g.sample()
        self.assertTrue(self.g.accepting)

    def test_cpu_rate(self):
        """CPU use is CPU seconds per wall second over the budget's CPUs."""
        tck = os.sysconf("SC_CLK_TCK")
        self.g.start()
        self.clock.advance(1.0)
        self.set_usage(int(0.9 * tck), 100)
        self.clock.advance(1.0)
        self.assertAlmostEqual(self.g.cpu_fraction, 0.9, places=1)
        self.assertFalse(self.g.accepting)
        self.assertEqual(self.g.reason, "cpu")
        self.g.stop()

    def test_missing_process(self):
        """A pid that has gone away is skipped, not an error."""
        self.g.pids = lambda: [42, 999999]
        self.g.sample()
        self.assertTrue(self.g.accepting)


class NoFileTests(unittest.TestCase):
    def test_raise_to_hard(self):
        """raise_nofile lifts the soft limit to the hard one."""
        before = resource.getrlimit(resource.RLIMIT_NOFILE)
        self.addCleanup(resource.setrlimit, resource.RLIMIT_NOFILE, before)
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(1024, before[1]), before[1]))
        self.assertEqual(guard.raise_nofile(), before[1])
        self.assertEqual(resource.getrlimit(resource.RLIMIT_NOFILE)[0], before[1])
