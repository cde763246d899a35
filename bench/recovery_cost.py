"""
What a recovery costs the shard's reactor, and what retaining an event
costs, for several commits measured in one run (issue 23, H1/H2: a
subscribe to 100 exact channels that match nothing, with C{since} 30% past
the oldest retained offset, used to scan every retained event after it).

    python bench/recovery_cost.py --variant before=f1ce214 --variant now=.

A variant is NAME=REF (a commit, checked out once into bench/.work/trees/,
or "." for the working tree), as in bench/cost.py. Each variant is measured
in its own process, importing that tree's odin_ws: a history of 27,000
events (3 partitions x 9,000, 2,000 tokens x 2 types, the shape of the H1
measurement), then milliseconds per C{History.replay} (best of 7, with
C{limits.max_recovery_scan} = 20,000) for:

* C{h1}: 100 exact channels that match nothing, since 30% back;
* C{few}: 5 channels that exist, since 30% back;
* C{all}: C{*.*} since 95% back (what a wildcard recovery sends);

and microseconds per C{History.add} with the history full (each add
evicts one). No network, no broker: CPU of this process only.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

PARTITIONS = 3
PER_PARTITION = 9_000
TOKENS = 2_000
TYPES = ("trade", "price")
MAX_SCAN = 20_000


def measure() -> dict[str, float]:
    """The numbers for the odin_ws on sys.path (run in the variant's process)."""
    from odin_ws.common.events import Event
    from odin_ws.shard.history.store import History

    value = b'{"price":0.00001234,"amount":1234.5678,"side":"buy"}'

    def build(i: int, p: int) -> Event:
        return Event.build(str(1000 + i * 7 % TOKENS), TYPES[i % 2], value, 1_000_000, "odin.t",
                           p, i, "e1")

    history = History(PER_PARTITION, 0, 1 << 30, 100_000, clock=time.time)
    for i in range(PER_PARTITION):
        for p in range(PARTITIONS):
            history.add(build(i, p))

    def since(back: float) -> dict[tuple[str, int], tuple[str, int]]:
        return {("odin.t", p): ("e1", int(PER_PARTITION * (1 - back)))
                for p in range(PARTITIONS)}

    cases = {
        "h1": (since(0.7), [(f"NONE{i}", "trade") for i in range(100)]),
        "few": (since(0.7), [(str(1000 + i), "trade") for i in range(5)]),
        "all": (since(0.05), [("*", "*")]),
    }
    out: dict[str, float] = {}
    for name, (positions, patterns) in cases.items():
        times = []
        for _ in range(7):
            t0 = time.perf_counter()
            events, reason = history.replay(positions, patterns, MAX_SCAN)
            times.append(time.perf_counter() - t0)
        out[name + "_ms"] = min(times) * 1e3
        out[name + "_events"] = len(events) if events is not None else -1
    n = 30_000
    extra = [build(PER_PARTITION + i, i % PARTITIONS) for i in range(n)]
    t0 = time.perf_counter()
    for e in extra:
        history.add(e)
    out["add_us"] = (time.perf_counter() - t0) / n * 1e6
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", action="append", default=[],
                        help="NAME=REF (a commit or '.'); repeatable")
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure()))
        return 0
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from cost import Variant
    rows = {}
    for spec in args.variant or ["now=."]:
        variant = Variant(spec)
        rows[variant.name] = json.loads(subprocess.check_output(
            [sys.executable, os.path.abspath(__file__), "--measure"], cwd=variant.repo,
            env=dict(os.environ, PYTHONPATH=variant.repo)))
    print(f"{'variant':10} {'h1 ms':>8} {'few ms':>8} {'all ms':>8} {'add us':>8}  events h1/few/all")
    for name, r in rows.items():
        print(f"{name:10} {r['h1_ms']:8.2f} {r['few_ms']:8.2f} {r['all_ms']:8.2f} "
              f"{r['add_us']:8.2f}  {r['h1_events']:.0f}/{r['few_events']:.0f}/{r['all_events']:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
