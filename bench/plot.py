"""
The latency-vs-rate chart of the benchmark as a self-contained SVG (no
plotting library is installed): p50 (dashed) and p99 (solid) at every ramp
step against the offered frames/s, one line per server, one panel per group
of cells (log-log axes).
"""

from __future__ import annotations

import math
from html import escape

COLORS = {"odinws": "#d62728", "cpython-raw": "#7f7f7f", "node-ws": "#2ca02c",
          "py-websockets": "#1f77b4", "nchan": "#9467bd", "centrifugo": "#17becf"}
EXTRA = ["#ff7f0e", "#8c564b", "#e377c2", "#bcbd22", "#000000"]
W, H, PAD_L, PAD_R, PAD_T, PAD_B = 760, 300, 64, 170, 34, 44


def _ticks(lo: float, hi: float) -> list[float]:
    out, e = [], math.floor(math.log10(lo))
    while 10 ** e <= hi * 1.0001:
        for m in (1, 2, 5):
            v = m * 10 ** e
            if lo <= v <= hi:
                out.append(v)
        e += 1
    return out


def _label(v: float, unit: str) -> str:
    if unit == "fps":
        return f"{v / 1e3:g}k" if v >= 1e3 else f"{v:g}"
    return f"{v:g}"


def panel(title: str, series: list[tuple[str, list[tuple[float, float, float]]]],
          y0: int) -> list[str]:
    """One panel: series = [(label, [(offered, p50_ms, p99_ms), ...]), ...]."""
    pts = [p for _, s in series for p in s if p[0] > 0 and p[1] > 0 and p[2] > 0]
    if not pts:
        return []
    x_lo, x_hi = min(p[0] for p in pts) / 1.2, max(p[0] for p in pts) * 1.2
    y_lo = max(0.05, min(p[1] for p in pts) / 1.5)
    y_hi = max(p[2] for p in pts) * 1.5
    lx0, lx1, ly0, ly1 = math.log10(x_lo), math.log10(x_hi), math.log10(y_lo), math.log10(y_hi)
    pw, ph = W - PAD_L - PAD_R, H - PAD_T - PAD_B

    def X(v):
        return PAD_L + (math.log10(v) - lx0) / (lx1 - lx0) * pw

    def Y(v):
        return y0 + PAD_T + ph - (math.log10(v) - ly0) / (ly1 - ly0) * ph

    out = [f'<text x="{PAD_L}" y="{y0 + 20}" font-size="14" font-weight="bold">'
           f'{escape(title)}</text>',
           f'<rect x="{PAD_L}" y="{y0 + PAD_T}" width="{pw}" height="{ph}" fill="none" '
           f'stroke="#999"/>']
    for v in _ticks(x_lo, x_hi):
        out.append(f'<line x1="{X(v):.1f}" x2="{X(v):.1f}" y1="{y0 + PAD_T}" '
                   f'y2="{y0 + PAD_T + ph}" stroke="#eee"/>')
        out.append(f'<text x="{X(v):.1f}" y="{y0 + PAD_T + ph + 14}" font-size="10" '
                   f'text-anchor="middle">{_label(v, "fps")}</text>')
    for v in _ticks(y_lo, y_hi):
        out.append(f'<line x1="{PAD_L}" x2="{PAD_L + pw}" y1="{Y(v):.1f}" y2="{Y(v):.1f}" '
                   f'stroke="#eee"/>')
        out.append(f'<text x="{PAD_L - 4}" y="{Y(v) + 3:.1f}" font-size="10" '
                   f'text-anchor="end">{_label(v, "ms")}</text>')
    out.append(f'<text x="{PAD_L + pw / 2}" y="{y0 + H - 8}" font-size="11" '
               f'text-anchor="middle">offered frames/s (log)</text>')
    out.append(f'<text x="14" y="{y0 + PAD_T + ph / 2}" font-size="11" text-anchor="middle" '
               f'transform="rotate(-90 14 {y0 + PAD_T + ph / 2})">latency ms (log)</text>')
    extra = iter(EXTRA)
    for i, (label, s) in enumerate(series):
        color = COLORS.get(label) or next(extra, "#000")
        s = sorted(p for p in s if p[0] > 0 and p[1] > 0 and p[2] > 0)
        for k, dash in ((2, ""), (1, ' stroke-dasharray="4 3"')):
            path = " ".join(f"{X(p[0]):.1f},{Y(p[k]):.1f}" for p in s)
            out.append(f'<polyline points="{path}" fill="none" stroke="{color}" '
                       f'stroke-width="1.6"{dash}/>')
            out += [f'<circle cx="{X(p[0]):.1f}" cy="{Y(p[k]):.1f}" r="2" fill="{color}"/>'
                    for p in s]
        ly = y0 + PAD_T + 12 + 16 * i
        out.append(f'<line x1="{W - PAD_R + 10}" x2="{W - PAD_R + 30}" y1="{ly - 4}" '
                   f'y2="{ly - 4}" stroke="{color}" stroke-width="2"/>')
        out.append(f'<text x="{W - PAD_R + 34}" y="{ly}" font-size="11">{escape(label)}</text>')
    ly = y0 + PAD_T + 12 + 16 * len(series) + 8
    out.append(f'<text x="{W - PAD_R + 10}" y="{ly}" font-size="10" fill="#555">solid: p99, '
               f'dashed: p50</text>')
    return out


def svg(panels: list[tuple[str, list]]) -> str:
    """The whole chart: one panel per (title, series) that has points."""
    body, y = [], 0
    for title, series in panels:
        part = panel(title, series, y)
        if part:
            body += part
            y += H
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{max(y, 1)}" '
            f'viewBox="0 0 {W} {max(y, 1)}" font-family="sans-serif">'
            f'<rect width="100%" height="100%" fill="white"/>' + "".join(body) + "</svg>\n")


def latency_panels(results: dict) -> list[tuple[str, list]]:
    """Panels of a run: the random-tokens cells per connections and mode, then the flush windows."""
    groups: dict[tuple, list] = {}
    for c in results["cells"]:
        kind = c.get("kind") or "all"
        if kind == "flush":
            key = (f"odinws, one event per turn, {c['conns']:,} conns, by flush window", 2,
                   c["conns"], "turn")
            label = f"flush {c['flush_delay'] * 1e3:g} ms"
        else:
            what = ("everyone subscribed to everything" if kind == "all" else
                    f"{c['random'][0]} random tokens of {c['random'][1]} per connection")
            key = (f"{what}, {c['conns']:,} conns, {c['mode']}", 0 if kind == "random" else 1,
                   c["conns"], c["mode"])
            label = c["server"] + (f" flush {c['flush_delay'] * 1e3:g} ms"
                                   if c.get("flush_delay") else "")
        pts = [(s["offered"], s["p50_ms"], s["p99_ms"]) for s in c["steps"]
               if s.get("p50_ms") is not None and s.get("p99_ms") is not None]
        groups.setdefault(key, []).append((label, pts))
    return [(k[0], v) for k, v in sorted(groups.items(), key=lambda kv: kv[0][1:])]
