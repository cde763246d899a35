"""
The operations files (dashboard, alert rules, unit, operations page) as tests
and the package test read them.
"""

from __future__ import annotations

import os
import re
import shutil

import yaml

from odin_ws.common import metrics
from odin_ws.shard.delivery.writestats import WriteStats, WriteStatsCollector
from odin_ws.shard.history.store import History, HistoryCollector
from tests.helpers.node import ROOT

DASHBOARD = os.path.join(ROOT, "etc", "grafana", "odinws-dashboard.json")
RULES = os.path.join(ROOT, "etc", "prometheus", "odinws-rules.yml")
UNIT = os.path.join(ROOT, "systemd", "odinws.service")
OPERATIONS = os.path.join(ROOT, "docs", "operations.md")

#: Families that may appear later (the node's readiness gauge): the
#: dashboard and alerts may use them before metrics.py declares them.
EXPECTED_FAMILIES = {
    "odinws_ready": "gauge",
}
#: Prometheus's own series that the rules may use.
PROMETHEUS_SERIES = {"up"}
#: Families the dashboard leaves out on purpose, and why (every other family
#: odinws exports has a panel; the old names of renamed metrics are left out
#: too: the dashboard uses the new ones).
DASHBOARD_LEFT_OUT = {
    "odinws_build": "the version as a label, not a series to watch",
    "odinws_ping_timeouts": "its closes are in the closes-by-code panel (code 1006); this "
                            "series tells them apart from other drops when asked",
    "odinws_history_events": "the history's size is watched in bytes against its budget",
    "odinws_snapshot_cache_channels": "the snapshot cache is watched in bytes",
    "odinws_history_visits": "a cost figure for profiling recoveries, not for operators",
    "process_virtual_memory_bytes": "resident memory is what the budget and the OOM killer see",
}

_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("", "_count", "_sum", "_created"),
    "info": ("_info",),
    "gauge": ("",),
}
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool",
             "and", "or", "unless", "offset", "inf", "nan"}
_IDENT = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


def sample_names(families: dict[str, str]) -> set[str]:
    """The sample names a family of each type appears under in the text format."""
    return {name + suffix for name, kind in families.items()
            for suffix in _SUFFIXES.get(kind, ("",))}


def exported_families() -> dict[str, str]:
    """
    Every family odinws exports, with its type: metrics.py's registry, the
    write path's and the history's collectors (each shard registers one of
    each), and EXPECTED_FAMILIES.
    """
    families = dict(EXPECTED_FAMILIES)
    history = HistoryCollector(History(1, 1, 1, 1, clock=lambda: 0.0), lambda: 1.0)
    for family in [*metrics.REGISTRY.collect(), *WriteStatsCollector(WriteStats()).collect(),
                   *history.collect()]:
        families[family.name] = family.type
    return families


def exported_names() -> set[str]:
    """Every sample name odinws exports (L{exported_families} in the text format)."""
    return sample_names(exported_families())


def metric_names(expr: str) -> set[str]:
    """
    The metric names a PromQL expression (possibly with Grafana variables)
    selects: identifiers that are not functions, aggregation modifiers,
    keywords, label names or values, durations or variables.
    """
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)
    text = re.sub(r"\{[^{}]*\}", " ", text)
    text = re.sub(r"\[[^\[\]]*\]", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", " ", text)
    text = re.sub(r"\$\{?\w+\}?", " ", text)
    names = set()
    for match in _IDENT.finditer(text):
        name = match.group()
        before = text[match.start() - 1] if match.start() else " "
        if before.isdigit() or before == ".":
            continue  # part of a number such as 1e9 or 0.5
        if re.match(r"\s*\(", text[match.end():]) or name.lower() in _KEYWORDS:
            continue
        names.add(name)
    return names


def dashboard_panels(dashboard: dict) -> list[dict]:
    panels = []
    for panel in dashboard["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))
    return panels


def load_rules() -> dict:
    with open(RULES) as f:
        return yaml.safe_load(f)


def all_rules(doc: dict) -> list[dict]:
    return [rule for group in doc["groups"] for rule in group["rules"]]


def recorded_names(doc: dict) -> set[str]:
    return {rule["record"] for rule in all_rules(doc) if "record" in rule}


def promtool() -> str | None:
    return shutil.which("promtool")


