"""
Python heap per idle subscribed connection, by allocation site: tracemalloc
snapshots diffed between N and 2N connections on the shard of
L{tests.helpers.cases.ShardTestCase} (real protocol, Session, Outbox and
subscription index; fake transports, so Twisted's TCP objects and the
kernel's socket are not in it). Deterministic, unlike the bench's RSS
figure (docs/performance.md, "Per-event Python, idle memory").

    .venv/bin/python bench/conn_memory.py [--connections 1000] [--channel 'odin.token.*.*']
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tracemalloc

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.helpers.cases import ShardTestCase  # noqa: E402


class _Shard(ShardTestCase):
    settings = {"keepalive.idle_timeout": 0, "limits.max_connections_per_ip": 1 << 20,
                "limits.max_connections_per_shard": 1 << 20, "limits.max_connections": 1 << 20}

    def runTest(self) -> None:
        """Not a test: the shard this script connects to."""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--connections", type=int, default=1000)
    ap.add_argument("--channel", default="odin.token.*.*")
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args()
    shard = _Shard()
    shard.setUp()
    kept = []

    def open_n(n: int, base: int) -> None:
        for i in range(base, base + n):
            client = shard.connect(ip=f"10.{i // 62500 % 250}.{i // 250 % 250}.{i % 250 + 1}")
            shard.subscribe(client, args.channel)
            kept.append(client)

    open_n(200, 0)      # warm: caches, interned strings, first-use allocations
    gc.collect()
    tracemalloc.start(8)
    n = args.connections
    open_n(n, 1000)
    gc.collect()
    first = tracemalloc.take_snapshot()
    open_n(n, 1000 + n)
    gc.collect()
    second = tracemalloc.take_snapshot()
    total = sum(s.size_diff for s in second.compare_to(first, "filename"))
    print(f"{total / n:.0f} bytes of Python heap per connection ({n:,} more, {args.channel})")
    for s in second.compare_to(first, "lineno")[:args.top]:
        print(f"{s.size_diff / n:7.0f} B {s.count_diff / n:5.2f} blocks  {s.traceback[0]}")


if __name__ == "__main__":
    main()
