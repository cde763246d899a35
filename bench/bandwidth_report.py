"""The markdown of bench/bandwidth.py's results (its docs/performance.md section)."""

from __future__ import annotations

import statistics


def render(results: dict) -> str:
    m = results["machine"]
    lines = [f"### Bandwidth: compression, deltas, rate caps, filters (run of {results['started']})",
             "",
             f"Commit {results['commit']}. Machine: {m['cpu']}, {m['cores']} cores, Linux "
             f"{m['kernel']}; Python {m['python']}, Twisted {m['twisted']}, Autobahn "
             f"{m['autobahn']}, websockets {m['websockets']}. Load average {results['load']} "
             f"at the start, {results.get('load_after', '?')} at the end: the machine was "
             "shared, so compare ratios within this run, not absolute figures across runs. "
             "One shard on CPU 0, clients and the Kafka feed on CPU 1.", ""]
    for part in (_bytes, _compress_cpu, _rate, _filter, _filter_cpu, _match):
        lines += part(results)
    return "\n".join(lines).rstrip() + "\n"


def _bytes(results: dict) -> list[str]:
    got = results.get("bytes")
    if not got:
        return []
    out = [f"**Bytes on the wire per delivered event**: the simulator's price and liquidity "
           f"streams ({got['count']:,} events at {got['rate']:g}/s over {got['tokens']} tokens, "
           "the same events to six Python `websockets` clients at once; bytes counted by a "
           "loopback proxy in front of each, frame headers included). The delta clients "
           "rebuild every event (merge-patch: `delta: \"merge-patch\"`, deltas in the "
           "envelope; compact: `delta: \"compact\"`, docs/protocol.md \"Compact deltas\"); "
           "\"exact\" compares channel, data and ts of every position with the plain "
           "client's, event by event. Target: deflate + delta at most 40% of plain.", "",
           "| client | negotiated | events | deltas | bytes/event | vs plain | exact |",
           "|---|---|---:|---:|---:|---:|---|"]
    for name, c in got["clients"].items():
        out.append(f"| {name} | {c['extensions'] or 'none'} | {c['events']:,} | {c['deltas']:,} | "
                   f"{_f(c['bytes_per_event'], '.1f')} | {_pct(c['vs_plain'])} | "
                   f"{'yes' if not c['data_mismatches'] else str(c['data_mismatches']) + ' wrong'}"
                   + (f", errors {c['errors']}" if c["errors"] else "") + " |")
    return out + [""]


def _pairs(rows: list[dict]) -> list[tuple[int, list[dict], list[dict]]]:
    """Per connection count: its rows off, and on."""
    return [(conns, [r for r in rows if r["conns"] == conns and not r["on"]],
             [r for r in rows if r["conns"] == conns and r["on"]])
            for conns in sorted({r["conns"] for r in rows})]


def _compress_cpu(results: dict) -> list[str]:
    rows = results.get("compress_cpu")
    if not rows:
        return []
    out = ["**Shard CPU per delivered frame, compression on against off** (the C load client, "
           "every connection subscribed to everything; on: it offers permessage-deflate and "
           "inflates every message; ~200-byte trade events in bursts of 10; CPU of the shard "
           "above its idle, as bench/cost.py). Target: on at most 1.2x off.", "",
           "| connections | events/s | off: µs/frame | on: µs/frame | on / off | "
           "bytes/frame off → on | messages inflated |", "|---:|---:|---:|---:|---:|---:|---:|"]
    for conns, off_rows, on_rows in _pairs(rows):
        off, on = _median(off_rows, "us_per_frame"), _median(on_rows, "us_per_frame")
        inflated = sum(r["compressed"] for r in on_rows)
        out.append(f"| {conns:,} | {off_rows[0]['rate']:g} | {_f(off, '.2f')} | {_f(on, '.2f')} | "
                   f"{_f(on / off if on and off else None, '.2f')} | "
                   f"{_f(_median(off_rows, 'wire_bytes_per_frame'), '.0f')} → "
                   f"{_f(_median(on_rows, 'wire_bytes_per_frame'), '.0f')} | {inflated:,}"
                   + (" (not negotiated: the server declined)" if not inflated else "") + " |")
    return out + [""]


def _rate(results: dict) -> list[str]:
    r = results.get("rate")
    if not r:
        return []
    return [f"**max_rate {r['max_rate']:g}** on a channel updated {r['updates'] / r['seconds']:.0f} "
            f"times a second for {r['seconds']:.1f} s ({r['control_events']} events reached a "
            f"client without the cap): the capped client got {r['events']} events, "
            f"{r['per_second']:.2f} a second, at least {_f(r['min_gap'], '.3f')} s apart; its "
            f"last event {'is' if r['last_is_latest'] else 'is NOT'} the channel's latest, "
            f"received {r['last_after_s']:.3f} s after it was produced"
            + (f"; errors: {r['errors']}" if r["errors"] else "")
            + ". Target: 2–3 a second, the latest within 0.5 s.", ""]


def _filter(results: dict) -> list[str]:
    f = results.get("filter")
    if not f:
        return []
    parts = []
    for name in ("tier", "price", "control"):
        c = f[name]
        what = f"`{_json(c['filter'])}`" if c["filter"] else "no filter"
        parts.append(f"{what}: {c['events']} of {c['expected']} expected, "
                     + ("exactly those" if c["exact"] else "NOT exactly those")
                     + (f" (errors {c['errors']})" if c["errors"] else ""))
    return [f"**Filters passing 10%** of {f['count']:,} events on one channel (the price field "
            "a numeric string): " + "; ".join(parts) + ".", ""]


def _filter_cpu(results: dict) -> list[str]:
    rows = results.get("filter_cpu")
    if not rows:
        return []
    out = ["**Shard CPU with a shared filter**: N connections subscribed to one channel with "
           "the same filter `{\"tier\":0}` (10% pass, in bursts of 10), against N connections "
           "without a filter on a channel that gets exactly the passing events (the other 90% "
           "go to a channel nobody holds): same Kafka ingest, same frames, so any difference "
           "is the filter's work. Target: the filter's cost does not grow with N, so CPU per "
           "delivered frame with the filter stays that without it, at every N. \"consumed/s\": "
           "the events the node consumed in the window (/metrics), \"delivered\": frames "
           "received over 10% of those times N (100%: every passing event reached every "
           "connection), \"dropped\": events dropped for slow clients in the window.", "",
           "| connections | events/s | frames/s filter / none | µs/frame filter / none | ratio | "
           "µs per produced event filter / none | consumed/s filter / none | "
           "delivered filter / none | dropped filter / none |",
           "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for conns, off_rows, on_rows in _pairs(rows):
        fps = [statistics.median(r["frames"] / r["dt"] for r in got) for got in (on_rows, off_rows)]
        frame = [_median(got, "us_per_frame") for got in (on_rows, off_rows)]
        event = [_median(got, "us_per_event") for got in (on_rows, off_rows)]
        ratio = frame[0] / frame[1] if frame[0] and frame[1] else None
        consumed = [_median([{"c": r.get("consumed", 0) / r["dt"]} for r in got], "c")
                    for got in (on_rows, off_rows)]
        share = [_median([{"s": r["frames"] / (0.1 * r["consumed"] * conns)} for r in got
                          if r.get("consumed")], "s") for got in (on_rows, off_rows)]
        dropped = [sum(r.get("dropped", 0) for r in got) for got in (on_rows, off_rows)]
        out.append(f"| {conns:,} | {on_rows[0]['rate']:g} | {fps[0]:,.0f} / {fps[1]:,.0f} | "
                   f"{_f(frame[0], '.2f')} / {_f(frame[1], '.2f')} | {_f(ratio, '.2f')} | "
                   f"{_f(event[0], '.0f')} / {_f(event[1], '.0f')} | "
                   f"{_f(consumed[0], '.0f')} / {_f(consumed[1], '.0f')} | "
                   f"{_pct(share[0])} / {_pct(share[1])} | {dropped[0]:,.0f} / {dropped[1]:,.0f} |")
    return out + [""]


def _match(results: dict) -> list[str]:
    rows = results.get("match")
    if not rows:
        return []
    out = ["**One filter's cost per event** (`EventFilter.matches` on the decoded data of a "
           "~200-byte trade, best of 5 runs of 200,000 calls in one process; the shard pays "
           "it once per event per distinct filter on the event's channel):", "",
           "| filter | spec | µs per event | passes |", "|---|---|---:|---|"]
    for r in rows:
        out.append(f"| {r['filter']} | `{_json(r['spec'])}` | {r['us']:.2f} | "
                   f"{'yes' if r['passes'] else 'no'} |")
    return out + [""]


def _median(rows: list[dict], key: str) -> float | None:
    got = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(got) if got else None


def _f(v: float | None, fmt: str) -> str:
    return "–" if v is None else format(v, fmt)


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{v:.0%}"


def _json(v: object) -> str:
    import json
    return json.dumps(v, separators=(",", ":"))
