"""
C{python -m odinws_tools.kafka --port PORT [--dir DIR] [--brokers N]}:
start Apache Kafka (KRaft) on 127.0.0.1, print C{bootstrap=HOST:PORT[,...]}
once it accepts produce and fetch, run until SIGTERM/SIGINT, then stop
every node it started. C{--fetch} only fetches the jars (C{make test} does).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time

from odinws_tools.kafka.cluster import KafkaCluster
from odinws_tools.kafka.jars import ensure_jars, kafka_version


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m odinws_tools.kafka", description=__doc__)
    parser.add_argument("--port", type=int, default=0,
                        help="port of the first broker (the next ones follow); 0: free ports")
    parser.add_argument("--dir", default=None,
                        help="data folder (kept; started as it is if it holds a cluster); "
                             "default: a temporary one, removed at exit")
    parser.add_argument("--brokers", type=int, default=1, help="number of nodes (default 1)")
    parser.add_argument("--fetch", action="store_true",
                        help="only fetch the jars with Maven (if missing) and exit")
    args = parser.parse_args(argv)
    if args.brokers < 1:
        parser.error("--brokers must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.fetch:
        print(f"kafka {kafka_version()} jars: {ensure_jars()}", flush=True)
        return 0
    stopping = threading.Event()

    def on_signal(signum, frame):
        stopping.set()
        # A signal during start-up interrupts the wait for readiness.
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    cluster = KafkaCluster(args.dir, brokers=args.brokers)
    try:
        started = time.monotonic()
        cluster.start(args.port)
        print(f"bootstrap={cluster.bootstrap}", flush=True)
        print(f"kafka {cluster.version}, {args.brokers} node(s), ready in "
              f"{time.monotonic() - started:.1f}s, data in {cluster.directory}",
              file=sys.stderr, flush=True)
        signal.signal(signal.SIGTERM, lambda *_: stopping.set())
        signal.signal(signal.SIGINT, lambda *_: stopping.set())
        while not stopping.wait(1.0):
            pass
    except KeyboardInterrupt:
        pass
    except RuntimeError as e:
        print(f"kafka: {e}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
