"""
permessage-deflate on the simulator's streams, in this process: for each
event type, the bytes of an event's frame plain and as a compressing
connection gets it (odin_ws/shard/delivery/deflate.py, the shard's own
compressor: no context takeover, a 15-bit window, the threshold of
outbound.compression_min_bytes), and the CPU time one compression takes
(best of 5): the shard pays it once per event, whatever the number of
connections. For comparison, what the same stream would take with context
taken over (one connection's own compressor across its messages, which
odinws does not do: it would compress per connection).

Prints one JSON line per event type; --markdown prints the table of
docs/performance.md instead. The real node's bytes on the wire (TCP
included, the deltas' too) are bench/bandwidth.py's bytes cell.

    python bench/deflate_cost.py --events 5000
    python bench/deflate_cost.py --loop 1000,5000   # the fan-out loop, compressing or not

--loop: bench/fanout_loop.py (every connection subscribed to every event,
one event per turn, socketpairs) with every connection compressing against
none, for both send loops: CPU microseconds (user + system) per delivered
frame, best of 3,
the runs of a cell interleaved so that the machine's load hits both alike.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import zlib

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from odin_ws.common.events import Event  # noqa: E402
from odin_ws.shard.delivery import deflate  # noqa: E402
from odin_ws.shard.delivery.deflate import FrameDeflater  # noqa: E402
from odin_ws.shard.delivery.frames import text_frame  # noqa: E402
from odinws_tools.simulate import DEFAULT_TOPICS, events  # noqa: E402


def measure(event_type: str, count: int, min_bytes: int, tokens: int = 100) -> dict:
    """Plain and compressed bytes per event, and microseconds per compression."""
    topics = {event_type: DEFAULT_TOPICS[event_type]}
    feed = events(tokens=tokens, seed=7, topics=topics)
    frames = []
    for offset in range(count):
        topic, key, value = next(feed)
        event = Event.build(key.decode(), event_type, value, int(time.time() * 1000), topic,
                            offset % 4, offset)
        frames.append(text_frame(event.envelope))
    # CPU time, best of 5: on a shared machine wall time mostly measures the neighbours.
    spent = float("inf")
    for _ in range(5):
        deflater = FrameDeflater(15, min_bytes)
        t0 = time.process_time()
        out = [deflater.frame(f) for f in frames]
        spent = min(spent, time.process_time() - t0)
    plain = sum(map(len, frames))
    wire = sum(map(len, out))
    z = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -15)
    takeover = sum(len(z.compress(deflate.payload_of(f)) + z.flush(zlib.Z_SYNC_FLUSH)) - 4 + 2
                   for f in frames)
    return {"event_type": event_type, "events": count, "min_bytes": min_bytes,
            "takeover_bytes_per_event": takeover / count,
            "plain_bytes_per_event": plain / count, "wire_bytes_per_event": wire / count,
            "ratio": wire / plain, "compressed": sum(o is not f for o, f in zip(out, frames)),
            "us_per_event": spent / count * 1e6}


def loop_costs(connections: list[int], rounds: int = 10) -> list[dict]:
    """Per connection count and send loop: CPU µs per frame compressing and not (best of 3)."""
    import fanout_loop
    rows = []
    for conns in connections:
        for native in ("on", "off"):
            best: dict[bool, dict] = {}
            for _ in range(3):
                for on in (False, True):
                    args = ["--native", native, "--connections", str(conns),
                            "--rounds", str(rounds)] + (["--deflate"] if on else [])
                    got, _ = fanout_loop.run(*args)
                    if on not in best or got["cpu_us_per_frame"] < best[on]["cpu_us_per_frame"]:
                        best[on] = got
            rows.append({"connections": conns, "native": native,
                         "off_us": best[False]["cpu_us_per_frame"],
                         "on_us": best[True]["cpu_us_per_frame"],
                         "ratio": best[True]["cpu_us_per_frame"] / best[False]["cpu_us_per_frame"],
                         "bytes_off": best[False]["bytes_per_frame"],
                         "bytes_on": best[True]["bytes_per_frame"]})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=5000)
    ap.add_argument("--min-bytes", type=int, default=128)
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--loop", help="connection counts for the fan-out loop cells, e.g. 1000,5000")
    args = ap.parse_args()
    if args.loop:
        rows = loop_costs([int(n) for n in args.loop.split(",")])
        print("| connections | loop | off: CPU µs/frame | on: CPU µs/frame | on / off | "
              "bytes/frame off → on |")
        print("|---:|---|---:|---:|---:|---:|")
        for r in rows:
            print(f"| {r['connections']:,} | {'C' if r['native'] == 'on' else 'Python'} | "
                  f"{r['off_us']:.2f} | {r['on_us']:.2f} | {r['ratio']:.2f} | "
                  f"{r['bytes_off']:.0f} → {r['bytes_on']:.0f} |")
        return
    rows = [measure(t, args.events, args.min_bytes) for t in ("price", "liquidity", "trade")]
    if not args.markdown:
        for row in rows:
            print(json.dumps(row))
        return
    print("| stream | plain B/event | deflate B/event | ratio | µs CPU per compression | "
          "with context takeover (not done) |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['event_type']} | {r['plain_bytes_per_event']:.0f} | "
              f"{r['wire_bytes_per_event']:.0f} | {r['ratio']:.0%} | {r['us_per_event']:.1f} | "
              f"{r['takeover_bytes_per_event']:.0f} B |")


if __name__ == "__main__":
    main()
