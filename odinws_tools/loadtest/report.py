"""
The report of an C{odinws-loadtest} run: the verdict and numbers as a dict
(written as C{report.json}), a short text summary, and one self-contained
HTML page (C{report.html}) with inline SVG plots: connections and delivery
rate over time, latency over time, and the latency histogram. No scripts,
no external resources.
"""

from __future__ import annotations

import html
import json
import os
import platform
import time
from collections.abc import Iterable
from typing import Any

from odinws_tools.loadtest.stats import Histogram, diff_series, evaluate


def machine() -> dict:
    """What the run ran on (for comparing reports)."""
    info: dict[str, Any] = {"cpus": os.cpu_count(), "kernel": platform.release(),
            "python": platform.python_version(), "host": platform.node()}
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next((line.split(":", 1)[1].strip() for line in f
                                if line.startswith("model name")), None)
        with open("/proc/meminfo") as f:
            kib = int(f.readline().split()[1])
            info["memory_gib"] = round(kib / 2 ** 20, 1)
    except (OSError, ValueError, IndexError):
        pass
    return info


def _phase_rows(timeline: list[dict], start: float, low: float, high: float) -> list[dict]:
    return [r for r in timeline if start + r["t"] - 1 >= low - 1e-6 and start + r["t"] <= high + 1e-6]


def build_report(args, run, elapsed: float) -> dict:
    """Everything about the run, the verdict included, as plain data."""
    from odinws_tools.loadtest.worker import patterns_for
    finals = run.finals
    failed: dict[str, int] = {}
    lost: dict[str, int] = {}
    handshake, subscribe = Histogram(), Histogram()
    for f in finals:
        for into, part in ((failed, f["failed"]), (lost, f["lost"])):
            for k, n in part.items():
                into[k] = into.get(k, 0) + n
        handshake.merge(Histogram.from_wire(f["handshake"]))
        subscribe.merge(Histogram.from_wire(f["subscribe"]))
    opened = sum(len(f["conns"]) for f in finals)
    attempted = opened + sum(failed.values())
    check = evaluate(finals, lambda g: patterns_for(run.spec(0), g), run.window_end * 1000.0)
    hold = _phase_rows(run.timeline, run.start, run.hold_start, run.hold_end)
    latency, latency_hold = Histogram(), Histogram()
    for row in run.timeline:
        latency.merge(Histogram.from_wire(row["hist"]))
    for row in hold:
        latency_hold.merge(Histogram.from_wire(row["hist"]))
    hold_events = sum(r["events"] for r in hold)
    rate = hold_events / len(hold) if hold else 0.0
    before, at_end = run.metrics.get("before"), run.metrics.get("hold_end")
    no_seq = sum(f["no_seq"] for f in finals)
    notices: dict[str, int] = {}
    for f in finals:
        for reason, n in f.get("gap_notices", {}).items():
            notices[reason] = notices.get(reason, 0) + n
    report: dict[str, Any] = {
        "tool": "odinws-loadtest",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(run.start)),
        "elapsed_s": round(elapsed, 1),
        "machine": machine(),
        "config": {"url": args.url, "connections": args.connections, "ramp_per_s": args.ramp_rate,
                   "duration_s": args.duration, "drain_s": args.drain,
                   "channels": None if args.random_tokens else args.channel_list,
                   "random_tokens": args.random_tokens or None, "workers": args.workers,
                   "source_addresses": args.sources, "connect_timeout_s": args.connect_timeout,
                   "client": args.client},
        "connections": {"target": args.connections, "attempted": attempted, "opened": opened,
                        "failed": failed, "lost": lost,
                        "not_attempted": args.connections - attempted,
                        "peak_up": max((r["up"] for r in run.timeline), default=0)},
        "handshake_ms": handshake.summary(),
        "subscribe_ms": subscribe.summary(),
        "events": {"delivered": latency.n, "hold_seconds": len(hold),
                   "hold_rate_per_s": round(rate, 1),
                   "per_connection_per_s": round(rate / opened, 3) if opened else None,
                   "without_seq": no_seq, "malformed": sum(f["malformed"] for f in finals),
                   "gap_notices": notices},
        "latency_ms": latency.summary(),
        "latency_hold_ms": latency_hold.summary(),
        "latency_histogram": [[round(lo, 3), round(hi, 3), n] for lo, hi, n in latency.bins()],
        "completeness": check,
        "client": {"cpu_seconds": round(sum(f["cpu"] for f in finals), 1),
                   "peak_cpu_share": round(max((r["client_cpu"] for r in run.timeline),
                                               default=0.0), 2),
                   # Cores the client used while the connections were held: what
                   # it took from the machine the server was measured on.
                   "hold_cpu_share": round(sum(r["client_cpu"] for r in hold) / len(hold), 3)
                   if hold else None,
                   "max_rss_mib": round(sum(f["max_rss_kib"] for f in finals) / 1024, 1)},
        "server_metrics": {"url": run.metrics_url or None,
                           "error": run.metrics.get("before_error") or run.metrics.get(
                               "hold_end_error"),
                           "before_to_hold_end": diff_series(before or {}, at_end or {})
                           if before is not None or at_end is not None else {}},
        "timeline": [{k: v for k, v in r.items() if k != "hist"} for r in run.timeline],
    }
    report["server"] = server_summary(report["server_metrics"]["before_to_hold_end"])
    report["verdict"] = verdict(report, interrupted=run.interrupted.is_set(),
                                workers_lost=args.workers - len(finals))
    report["summary_text"] = summary_text(report)
    return report


def server_summary(diff: dict) -> dict:
    """A few numbers derived from the metrics diff (None where a series is missing)."""
    def value(name, key="after"):
        return (diff.get(name) or {}).get(key)

    count = value("odinws_delivery_latency_seconds_count", "delta")
    total = value("odinws_delivery_latency_seconds_sum", "delta")
    rss = value("process_resident_memory_bytes")
    return {"connections_at_hold_end": value("odinws_connections"),
            "rss_mib_at_hold_end": round(rss / 2 ** 20, 1) if rss is not None else None,
            "cpu_seconds": value("process_cpu_seconds_total", "delta"),
            "kafka_records": value("odinws_kafka_records_total", "delta"),
            "mean_kafka_to_first_write_ms": round(total / count * 1000, 1) if count else None}


def verdict(report: dict, interrupted: bool = False, workers_lost: int = 0) -> dict:
    """passed, and the reasons it did not (and warnings that do not fail it)."""
    c, e, k = report["connections"], report["events"], report["completeness"]
    reasons = []
    if interrupted:
        reasons.append("interrupted")
    if workers_lost:
        reasons.append(f"{workers_lost} worker(s) ended without a report")
    if c["failed"]:
        reasons.append("connections failed: " + _counts(c["failed"]))
    if c["not_attempted"]:
        reasons.append(f"{c['not_attempted']} connections never attempted")
    if c["lost"]:
        reasons.append("connections lost during the run: " + _counts(c["lost"]))
    if not e["delivered"]:
        reasons.append("no events delivered (is a producer running?)")
    for key, what in (("missing", "events missing"), ("gaps", "sequence gaps"),
                      ("duplicates", "duplicates"), ("missing_everywhere",
                                                     "events no connection received")):
        if k[key]:
            reasons.append(f"{k[key]} {what}")
    warnings = []
    if e["without_seq"]:
        warnings.append(f"{e['without_seq']} events without an integer seq field: "
                        "gaps and duplicates were not checked for them")
    if e["malformed"]:
        warnings.append(f"{e['malformed']} malformed messages")
    if e.get("gap_notices"):
        warnings.append("gap notices from the server (skipped events it announced): "
                        + _counts(e["gap_notices"]))
    return {"passed": not reasons, "reasons": reasons, "warnings": warnings}


def _counts(d: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(d.items(), key=lambda kv: -kv[1]))


def _ms(x) -> str:
    return "-" if x is None else f"{x:.1f}"


def _cores(x) -> str:
    return "-" if x is None else f"{x:.2f}"


def summary_text(r: dict) -> str:
    c, lat, k, v = r["connections"], r["latency_hold_ms"], r["completeness"], r["verdict"]
    lines = [
        f"connections: {c['opened']}/{c['target']} opened, failed {sum(c['failed'].values())}"
        f"{' (' + _counts(c['failed']) + ')' if c['failed'] else ''}, lost "
        f"{sum(c['lost'].values())}, peak up {c['peak_up']}",
        f"handshake ms: p50 {_ms(r['handshake_ms']['p50'])} p99 {_ms(r['handshake_ms']['p99'])}"
        f" max {_ms(r['handshake_ms']['max'])}",
        f"delivered: {r['events']['hold_rate_per_s']:,.0f} events/s during the hold "
        f"({r['events']['delivered']:,} in all; {k['distinct_events']:,} distinct events on "
        f"{k['channels']} channels)",
        f"latency ms (hold): p50 {_ms(lat['p50'])} p95 {_ms(lat['p95'])} p99 {_ms(lat['p99'])}"
        f" max {_ms(lat['max'])}",
        f"completeness: {k['received']:,}/{k['expected']:,} expected events received, missing "
        f"{k['missing']}, gaps {k['gaps']}, duplicates {k['duplicates']}",
        f"client: cpu {r['client']['cpu_seconds']} s, {_cores(r['client']['hold_cpu_share'])} "
        f"core on average in the hold, peak {r['client']['peak_cpu_share']:.0%} of one core, "
        f"max rss {r['client']['max_rss_mib']} MiB (all workers)",
        "verdict: " + ("PASS" if v["passed"] else "FAIL: " + "; ".join(v["reasons"])),
    ]
    srv = r["server"]
    if srv["connections_at_hold_end"] is not None:
        lines.insert(-1, f"server (from /metrics): {srv['connections_at_hold_end']:.0f} connections "
                     f"and {srv['rss_mib_at_hold_end']} MiB RSS at the end of the hold, cpu "
                     f"{srv['cpu_seconds']:.1f} s, mean Kafka-to-first-write "
                     f"{_ms(srv['mean_kafka_to_first_write_ms'])} ms")
    lines += [f"warning: {w}" for w in v["warnings"]]
    return "\n".join(lines)


def write_report(report: dict, directory: str) -> list[str]:
    """Write report.json and report.html into C{directory}; return their paths."""
    os.makedirs(directory, exist_ok=True)
    paths = [os.path.join(directory, "report.json"), os.path.join(directory, "report.html")]
    with open(paths[0], "w") as f:
        json.dump(report, f, indent=1)
    with open(paths[1], "w") as f:
        f.write(render_html(report))
    return paths


# -- HTML -------------------------------------------------------------------

_W, _H, _PAD = 760, 220, 48


def _ticks(top: float, n: int = 4) -> list[float]:
    if top <= 0:
        return [0.0]
    step = 10 ** len(str(int(top / n))) / 10 if top >= n else top / n
    for mult in (1, 2, 2.5, 5, 10):
        if top / (step * mult) <= n:
            step *= mult
            break
    return [i * step for i in range(int(top / step) + 1)]


def _fmt(x: float) -> str:
    return f"{x / 1000:g}k" if x >= 1000 else f"{x:g}"


def line_chart(title: str, xs: list[float], series: Iterable[tuple[str, str, list]],
               unit: str = "", marks: Iterable[tuple[float, str]] = ()) -> str:
    """
    An SVG line chart; series are (name, colour, values aligned with xs),
    marks (x, label) are dashed vertical lines (phase changes).
    """
    series = list(series)
    values = [v for _, _, vs in series for v in vs if v is not None]
    top = max(values, default=0) * 1.05 or 1.0
    x0, x1 = (min(xs), max(xs)) if xs else (0, 1)
    span = (x1 - x0) or 1

    def px(x):
        return _PAD + (x - x0) / span * (_W - 2 * _PAD)

    def py(y):
        return _H - _PAD + 10 - y / top * (_H - _PAD - 20)

    out = [f'<svg viewBox="0 0 {_W} {_H + 10}" width="{_W}" height="{_H + 10}" '
           f'role="img" aria-label="{html.escape(title)}">',
           f'<text x="{_PAD}" y="14" class="t">{html.escape(title)}</text>']
    for tick in _ticks(top):
        y = py(tick)
        out.append(f'<line x1="{_PAD}" x2="{_W - _PAD}" y1="{y:.1f}" y2="{y:.1f}" class="g"/>'
                   f'<text x="{_PAD - 4}" y="{y + 4:.1f}" class="l" text-anchor="end">'
                   f'{_fmt(tick)}{unit}</text>')
    for tick in _ticks(x1 - x0, 8):
        x = px(x0 + tick)
        out.append(f'<text x="{x:.1f}" y="{_H + 4}" class="l" text-anchor="middle">'
                   f'{x0 + tick:g}s</text>')
    for i, (x, label) in enumerate(m for m in marks if x0 <= m[0] <= x1):
        # Alternate label heights: phases can be a second apart (drain, close).
        out.append(f'<line x1="{px(x):.1f}" x2="{px(x):.1f}" y1="20" y2="{_H - _PAD + 10}" '
                   f'class="m"/><text x="{px(x) + 3:.1f}" y="{30 + 11 * (i % 2)}" class="l">'
                   f'{html.escape(label)}</text>')
    for i, (name, colour, vs) in enumerate(series):
        pts = " ".join(f"{px(x):.1f},{py(v):.1f}" for x, v in zip(xs, vs) if v is not None)
        out.append(f'<polyline points="{pts}" fill="none" stroke="{colour}" stroke-width="1.6"/>'
                   f'<text x="{_W - _PAD - 150 + 75 * i}" y="14" class="l" style="fill:{colour}">'
                   f'&#9632; {html.escape(name)}</text>')
    out.append("</svg>")
    return "\n".join(out)


def histogram_chart(title: str, bins: list) -> str:
    """Bars of (low ms, high ms, count) bins, evenly spaced (the bins are log-spaced)."""
    if not bins:
        return f"<p>{html.escape(title)}: no data</p>"
    top = max(n for _, _, n in bins) * 1.05
    width = (_W - 2 * _PAD) / len(bins)
    out = [f'<svg viewBox="0 0 {_W} {_H + 10}" width="{_W}" height="{_H + 10}" role="img" '
           f'aria-label="{html.escape(title)}">',
           f'<text x="{_PAD}" y="14" class="t">{html.escape(title)}</text>']
    for tick in _ticks(top):
        y = _H - _PAD + 10 - tick / top * (_H - _PAD - 20)
        out.append(f'<line x1="{_PAD}" x2="{_W - _PAD}" y1="{y:.1f}" y2="{y:.1f}" class="g"/>'
                   f'<text x="{_PAD - 4}" y="{y + 4:.1f}" class="l" text-anchor="end">'
                   f'{_fmt(tick)}</text>')
    every = max(1, round(len(bins) / 8))
    for i, (lo, hi, n) in enumerate(bins):
        h = n / top * (_H - _PAD - 20)
        x = _PAD + i * width
        out.append(f'<rect x="{x + 1:.1f}" y="{_H - _PAD + 10 - h:.1f}" width="{max(1, width - 2):.1f}"'
                   f' height="{h:.1f}" fill="#3b7dd8"><title>{lo:.3g}-{hi:.3g} ms: {n}</title></rect>')
        if i % every == 0:
            out.append(f'<text x="{x:.1f}" y="{_H + 4}" class="l">{_fmt(float(f"{lo:.2g}"))}'
                       '</text>')
    out.append(f'<text x="{_W - _PAD}" y="{_H + 4}" class="l" text-anchor="end">ms</text></svg>')
    return "\n".join(out)


def _table(rows: list[tuple[str, object]]) -> str:
    return "<table>" + "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}"
                               f"</td></tr>" for k, v in rows) + "</table>"


def render_html(r: dict) -> str:
    """One self-contained page (inline CSS and SVG)."""
    tl = r["timeline"]
    xs = [row["t"] for row in tl]
    v = r["verdict"]
    verdict_line = "PASS" if v["passed"] else "FAIL: " + "; ".join(v["reasons"])
    metrics = r["server_metrics"]["before_to_hold_end"]
    metric_rows = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{_num(m['before'])}</td><td>{_num(m['after'])}</td>"
        f"<td>{_num(m['delta'])}</td></tr>" for k, m in metrics.items())
    cfg = r["config"]
    marks = [(row["t"] - 1, row["phase"]) for prev, row in zip(tl, tl[1:])
             if row["phase"] != prev["phase"]]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>odinws load test</title>",
        "<style>body{font:14px system-ui,sans-serif;margin:24px;max-width:900px}"
        "table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ccc;padding:3px 8px;"
        "text-align:left}.t{font-weight:600;font-size:13px}.l{font-size:11px;fill:#555}"
        ".g{stroke:#eee}.m{stroke:#999;stroke-dasharray:4 3}.pass{color:#176d2c}"
        ".fail{color:#b00020}pre{background:#f6f6f6;"
        "padding:8px;white-space:pre-wrap}</style></head><body>",
        f"<h1>odinws load test</h1><p class='{'pass' if v['passed'] else 'fail'}'>"
        f"<b>{html.escape(verdict_line)}</b></p>",
        f"<pre>{html.escape(r['summary_text'])}</pre>",
        _table([("started", r["started"]), ("url", cfg["url"]),
                ("connections", cfg["connections"]), ("ramp", f"{cfg['ramp_per_s']:g}/s"),
                ("hold / drain", f"{cfg['duration_s']:g} s / {cfg['drain_s']:g} s"),
                ("subscription", cfg["channels"] or f"{cfg['random_tokens']} random tokens"),
                ("workers / source addresses", f"{cfg['workers']} / "
                 f"{', '.join(cfg['source_addresses']) or 'any'}"),
                ("machine", ", ".join(f"{k} {v}" for k, v in r["machine"].items())),
                ("run time", f"{r['elapsed_s']} s")]),
        line_chart("Connections up", xs, [("up", "#3b7dd8", [row["up"] for row in tl]),
                                          ("failed", "#b00020", [row["failed"] for row in tl])],
                   marks=marks),
        line_chart("Delivered events per second", xs,
                   [("events/s", "#176d2c", [row["events"] for row in tl])], marks=marks),
        line_chart("Latency per second (ms)", xs,
                   [("p50", "#3b7dd8", [row["p50"] for row in tl]),
                    ("p99", "#d87b3b", [row["p99"] for row in tl])], marks=marks),
        histogram_chart("Latency histogram (ms, all events)", r["latency_histogram"]),
        "<h2>Server metrics (before the run, end of the hold)</h2>",
        f"<table><tr><th>series</th><th>before</th><th>hold end</th><th>delta</th></tr>"
        f"{metric_rows}</table>" if metrics else
        f"<p>not available: {html.escape(str(r['server_metrics']['error']))}</p>",
        "</body></html>",
    ]
    return "\n".join(parts)


def _num(x) -> str:
    if x is None:
        return "-"
    return f"{x:,.0f}" if abs(x) >= 100 or x == int(x) else f"{x:.3g}"
