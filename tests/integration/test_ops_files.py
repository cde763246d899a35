"""
The operations files agree with the code: the Grafana dashboard and the
Prometheus rules use only metrics odinws exports, are well-formed, and the
rules fire on the series they are meant for (with promtool, when installed);
the systemd unit and the Debian packaging match the config defaults and the
package version.
"""

from __future__ import annotations

import configparser
import json
import os
import re
import shutil
import subprocess
import tempfile

import yaml
from twisted.trial import unittest

import odin_ws
from odin_ws.common import config as configmod
from odin_ws.common import metrics
from tests.helpers import (
    DASHBOARD,
    DASHBOARD_LEFT_OUT,
    OPERATIONS,
    PROMETHEUS_SERIES,
    ROOT,
    RULES,
    UNIT,
    all_rules,
    dashboard_panels,
    exported_families,
    exported_names,
    load_rules,
    metric_names,
    promtool,
    recorded_names,
    sample_names,
)


class MetricNamesTests(unittest.TestCase):
    """The expression parser the other checks rely on."""

    def test_selectorsFunctionsAndModifiers(self):
        """
        Only metric names come out of an expression with functions,
        aggregation modifiers, label matchers, ranges and Grafana variables.
        """
        expr = ('histogram_quantile(0.99, sum by (instance, le) (rate('
                'odinws_delivery_latency_seconds_bucket{instance=~"$instance",shard!=""}'
                '[$__rate_interval])))')
        self.assertEqual(metric_names(expr), {"odinws_delivery_latency_seconds_bucket"})

    def test_binaryOperatorsAndStrings(self):
        """
        Both sides of set operators count; quoted strings, keywords and
        numbers do not.
        """
        expr = ('a_total{x="b_total"} unless on (instance) c > 1e9 and '
                'label_replace(d, "dst", "$1", "src", "(e_total)") offset 5m')
        self.assertEqual(metric_names(expr), {"a_total", "c", "d"})

    def test_exportedNamesFollowTypes(self):
        """
        Counters are exported with _total, histograms with _bucket/_sum/_count,
        the info metric with _info: the names a query must use.
        """
        names = exported_names()
        for name in ("odinws_connections_opened_total", "odinws_delivery_latency_seconds_bucket",
                     "odinws_build_info", "odinws_connections", "odinws_events_delivered_total",
                     "process_cpu_seconds_total", "odinws_dispatch_total"):
            self.assertIn(name, names)
        for name in ("odinws_connections_opened", "odinws_delivery_latency_seconds",
                     "odinws_connections_total"):
            self.assertNotIn(name, names)


class DashboardTests(unittest.TestCase):
    """etc/grafana/odinws-dashboard.json."""

    def setUp(self):
        with open(DASHBOARD) as f:
            self.dashboard = json.load(f)
        self.panels = dashboard_panels(self.dashboard)

    def test_importable(self):
        """
        The JSON has what Grafana's import needs: a title, a uid, no fixed
        id, a schemaVersion of at least 36, and a prometheus datasource
        variable that every panel and the instance variable query through.
        """
        d = self.dashboard
        self.assertTrue(d["title"] and d["uid"])
        self.assertIsNone(d.get("id"))
        self.assertGreaterEqual(d["schemaVersion"], 36)
        variables = {v["name"]: v for v in d["templating"]["list"]}
        self.assertEqual((variables["datasource"]["type"], variables["datasource"]["query"]),
                         ("datasource", "prometheus"))
        instance = variables["instance"]
        self.assertEqual(instance["type"], "query")
        self.assertEqual(instance["datasource"]["uid"], "${datasource}")
        self.assertIn("instance", instance["definition"])
        for panel in self.panels:
            if panel["type"] == "row":
                continue
            self.assertEqual(panel["datasource"]["uid"], "${datasource}", panel["title"])
            for target in panel["targets"]:
                self.assertEqual(target["datasource"]["uid"], "${datasource}", panel["title"])

    def test_rows(self):
        """
        The rows an operator looks for are there, in order, and every panel
        sits under one of them.
        """
        self.assertEqual(self.dashboard["panels"][0]["type"], "row")
        rows = [p["title"] for p in self.panels if p["type"] == "row"]
        self.assertEqual(rows, ["Overview", "Connections", "Kafka", "Delivery", "Hub", "Shards",
                                "Recovery and history", "Catch-up and gaps",
                                "Compression", "Reconnection storms", "Schema Registry",
                                "Subscription options"])

    def test_layout(self):
        """Panel ids are unique and no two panels overlap on the 24-column grid."""
        ids = [p["id"] for p in self.panels]
        self.assertEqual(len(ids), len(set(ids)))
        cells = {}
        for panel in self.panels:
            g = panel["gridPos"]
            self.assertLessEqual(g["x"] + g["w"], 24, panel["title"])
            for x in range(g["x"], g["x"] + g["w"]):
                for y in range(g["y"], g["y"] + g["h"]):
                    self.assertNotIn((x, y), cells, f"{panel['title']} overlaps {cells.get((x, y))}")
                    cells[(x, y)] = panel["title"]

    def test_exprsUseExportedMetrics(self):
        """
        Every query of every panel selects at least one metric, and only
        metrics odinws exports (so no panel is silently empty for a typo).
        """
        known = exported_names()
        for panel in self.panels:
            for target in panel.get("targets", []):
                names = metric_names(target["expr"])
                self.assertTrue(names, f"{panel['title']}: no metric in {target['expr']}")
                self.assertEqual(names - known, set(), f"{panel['title']}: {target['expr']}")

    def shown(self) -> set[str]:
        """The metric names the panels' queries select."""
        return {name for panel in self.panels for target in panel.get("targets", [])
                for name in metric_names(target["expr"])}

    def test_everyMetricShownOrLeftOutOnPurpose(self):
        """
        Every family odinws exports has a panel, or is in DASHBOARD_LEFT_OUT
        with a reason (or is the old name of a renamed metric): a metric
        added without a panel fails here until it gets one or a reason.
        The left-out list names only exported families that no panel shows.
        """
        shown = self.shown()
        families = exported_families()
        missing = sorted(name for name, kind in families.items()
                         if not sample_names({name: kind}) & shown
                         and name not in DASHBOARD_LEFT_OUT and name not in metrics.RENAMED)
        self.assertEqual(missing, [])
        for name in DASHBOARD_LEFT_OUT:
            self.assertIn(name, families)
            self.assertFalse(sample_names({name: families[name]}) & shown, name)

    def test_kafkaPanelsUnderTheKafkaRow(self):
        """
        The group's troubles (partitions lost without a handover, stalled
        partitions, rejoins, replacements, batches joined behind a busy
        shard) are panels of the Kafka row, beside lag and consumer errors.
        """
        rows = sorted((p["gridPos"]["y"], p["title"]) for p in self.panels if p["type"] == "row")

        def row_of(panel: dict) -> str:
            return [title for y, title in rows if y <= panel["gridPos"]["y"]][-1]
        for family in ("odinws_kafka_assignments_lost_total", "odinws_kafka_partitions_stalled",
                       "odinws_kafka_group_rejoins_total",
                       "odinws_kafka_consumer_replacements_total",
                       "odinws_kafka_batches_joined_total", "odinws_kafka_consumer_lag"):
            holders = [p for p in self.panels if any(
                family in metric_names(t["expr"]) for t in p.get("targets", []))]
            self.assertTrue(holders, family)
            self.assertEqual({row_of(p) for p in holders}, {"Kafka"}, family)

    def concrete_exprs(self) -> list[str]:
        """The panel queries with Grafana's variables substituted."""
        exprs = [t["expr"] for p in self.panels for t in p.get("targets", [])]
        return [e.replace("$__rate_interval", "5m").replace("$__range", "1h")
                .replace("$instance", ".+") for e in exprs]

    def test_promqlBalanced(self):
        """Every panel query's parentheses, brackets and braces balance."""
        for expr in self.concrete_exprs():
            assertBalanced(self, expr)

    def test_promqlParses(self):
        """
        Every panel query is valid PromQL once Grafana's variables are
        substituted: promtool parses each as a recording rule.
        """
        tool = require_promtool()
        concrete = self.concrete_exprs()
        doc = {"groups": [{"name": "dashboard", "rules": [
            {"record": f"dashboard:expr{i}", "expr": e} for i, e in enumerate(concrete)]}]}
        result = run_promtool(tool, ["check", "rules"], doc)
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)


def require_promtool() -> str:
    """promtool's path; the test is skipped (said, not passed) without it."""
    tool = promtool()
    if tool is None:
        raise unittest.SkipTest("promtool not installed (apt-get install prometheus, as "
                                ".ci/run does): PromQL and rule tests need it")
    return tool


def assertBalanced(case: unittest.TestCase, expr: str) -> None:
    stack = []
    pairs = {")": "(", "]": "[", "}": "{"}
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    for ch in text:
        if ch in "([{":
            stack.append(ch)
        elif ch in pairs:
            case.assertTrue(stack and stack.pop() == pairs[ch], f"unbalanced: {expr}")
    case.assertEqual(stack, [], f"unbalanced: {expr}")


def run_promtool(tool: str, args: list[str], doc: dict,
                 extra: dict[str, dict] | None = None) -> subprocess.CompletedProcess:
    """Write C{doc} (and C{extra} files) to a temporary directory; run promtool on it."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "main.yml")
        with open(path, "w") as f:
            yaml.safe_dump(doc, f)
        for name, content in (extra or {}).items():
            with open(os.path.join(tmp, name), "w") as f:
                yaml.safe_dump(content, f)
        return subprocess.run([tool, *args, path], capture_output=True, text=True, cwd=tmp,
                              timeout=120)


class RulesTests(unittest.TestCase):
    """etc/prometheus/odinws-rules.yml."""

    def setUp(self):
        self.doc = load_rules()
        self.rules = all_rules(self.doc)

    def test_shape(self):
        """
        Groups have names and rules; a rule is a recording rule with a
        level:metric:operation name or an alert with a severity, a summary,
        a description and a valid `for`; no name is used twice.
        """
        for group in self.doc["groups"]:
            self.assertTrue(group["name"])
            self.assertTrue(group["rules"])
        seen = set()
        for rule in self.rules:
            self.assertIn("expr", rule)
            name = rule.get("record") or rule.get("alert")
            self.assertNotIn(name, seen)
            seen.add(name)
            if "record" in rule:
                self.assertNotIn("alert", rule)
                self.assertRegex(rule["record"], r"^[a-z_]+:odinws_[a-z_]+:[a-z0-9_]+$")
                continue
            self.assertRegex(rule["alert"], r"^Odinws[A-Za-z]+$")
            self.assertIn(rule["labels"]["severity"], ("warning", "critical"))
            self.assertTrue(rule["annotations"]["summary"])
            self.assertTrue(rule["annotations"]["description"])
            if "for" in rule:
                self.assertRegex(rule["for"], r"^\d+[smh]$")

    def test_alertsCoverTheFailures(self):
        """
        The failures an operator must hear about each have an alert: node
        down or not ready, no shard alive, crash-looping shard, Kafka
        unreachable or lag growing, slow delivery, drops, memory, events lost
        as duplicates, a topic's log started over.
        """
        alerts = {r["alert"] for r in self.rules if "alert" in r}
        self.assertLessEqual({"OdinwsDown", "OdinwsNotReady", "OdinwsNoShardsAlive",
                              "OdinwsShardCrashLooping", "OdinwsKafkaDisconnected",
                              "OdinwsKafkaLagGrowing", "OdinwsDeliveryLatencyHigh",
                              "OdinwsEventsDropped", "OdinwsMemoryNearLimit",
                              "OdinwsDuplicatesSustained", "OdinwsKafkaLogReset"}, alerts)

    def test_everyAlertHasARunbook(self):
        """
        Every alert's runbook_url points at docs/operations.md, at the
        anchor of a section of that page titled with the alert's name (the
        anchor GitHub gives the heading), and all alerts share one base.
        """
        with open(OPERATIONS) as f:
            anchors = {heading_anchor(m.group(1)): m.group(1)
                       for m in re.finditer(r"^#+ (.+)$", f.read(), re.M)}
        bases = set()
        for rule in self.rules:
            if "alert" not in rule:
                continue
            url = rule["annotations"].get("runbook_url", "")
            base, _, anchor = url.partition("#")
            self.assertTrue(base.startswith("https://") and base.endswith("/docs/operations.md"),
                            f"{rule['alert']}: {url!r}")
            self.assertEqual(anchors.get(anchor), rule["alert"], f"{rule['alert']}: {url!r}")
            bases.add(base)
        self.assertEqual(len(bases), 1, bases)

    def test_noDeprecatedNames(self):
        """
        The shipped rules and dashboard use none of the old names of
        renamed metrics (still exported for one release as aliases).
        """
        with open(DASHBOARD) as f:
            dashboard = json.load(f)
        exprs = [rule["expr"] for rule in self.rules]
        exprs += [t["expr"] for p in dashboard_panels(dashboard) for t in p.get("targets", [])]
        old = sample_names({name: "counter" if name.endswith("_seconds") else "gauge"
                            for name in metrics.RENAMED})
        for expr in exprs:
            self.assertEqual(metric_names(expr) & old, set(), expr)

    def test_exprsUseExportedMetrics(self):
        """
        Every rule selects only metrics odinws exports, Prometheus's `up`, or
        series recorded by this same file.
        """
        known = exported_names() | PROMETHEUS_SERIES | recorded_names(self.doc)
        for rule in self.rules:
            names = metric_names(rule["expr"])
            self.assertTrue(names, rule["expr"])
            self.assertEqual(names - known, set(), rule.get("alert") or rule.get("record"))

    def test_balanced(self):
        """The expressions' brackets balance and every template's braces pair up."""
        for rule in self.rules:
            assertBalanced(self, rule["expr"])
            for text in rule.get("annotations", {}).values():
                self.assertEqual(text.count("{{"), text.count("}}"), text)

    def test_promtoolCheck(self):
        """
        `promtool check rules` accepts the file (expressions, durations and
        annotation templates).
        """
        tool = require_promtool()
        result = subprocess.run([tool, "check", "rules", RULES], capture_output=True, text=True,
                                timeout=120)
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)

    def test_scenariosNameRealAlerts(self):
        """The alert scenarios below expect only alerts the rules define."""
        alerts = {r["alert"] for r in self.rules if "alert" in r}
        for case in alert_scenarios():
            for expectation in case["alert_rule_test"]:
                self.assertIn(expectation["alertname"], alerts)

    def test_alertsFire(self):
        """
        On synthetic series (promtool test rules), the key alerts fire when
        they should and stay quiet otherwise: crash-looping shard, no shard
        alive, growing (not steady) lag, drops above 1% of deliveries, sustained
        duplicates (marks that never went back), a new incarnation of a topic,
        a late warm-up going on past twice the shipped timeout.
        Annotations are left out of the comparison (promtool check covers
        their templates).
        """
        tool = require_promtool()
        tests = alert_scenarios()
        stripped = load_rules()
        for rule in all_rules(stripped):
            rule.pop("annotations", None)
        doc = {"rule_files": ["rules.yml"], "evaluation_interval": "1m", "tests": tests}
        result = run_promtool(tool, ["test", "rules"], doc, extra={"rules.yml": stripped})
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)


def heading_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading: lower case, punctuation out, spaces as -."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def alert_scenarios() -> list[dict]:
    """promtool test-rules cases: (series, alert, expected firing label sets)."""
    node = {"instance": "ws-1:3005", "job": "odinws"}

    def series(name: str, values: str, **labels: str) -> dict:
        all_labels = {**node, **labels}
        text = ",".join(f'{k}="{v}"' for k, v in sorted(all_labels.items()))
        return {"series": f"{name}{{{text}}}", "values": values}

    def expect(alert: str, at: str, *label_sets: dict) -> dict:
        return {"eval_time": at, "alertname": alert,
                "exp_alerts": [{"exp_labels": labels} for labels in label_sets]}

    return [
        {"interval": "1m",
         "input_series": [series("odinws_shard_restarts_total", "0+1x30", shard="1"),
                          series("odinws_shard_restarts_total", "0+0x30", shard="0")],
         "alert_rule_test": [expect("OdinwsShardCrashLooping", "20m",
                                    {**node, "shard": "1", "severity": "critical"})]},
        {"interval": "1m",
         "input_series": [series("process_start_time_seconds", "1+0x10"),
                          series("process_start_time_seconds", "1+0x10",
                                 instance="ws-2:3005"),
                          series("process_start_time_seconds", "1+0x10",
                                 instance="ws-2:3005", shard="0")],
         "alert_rule_test": [expect("OdinwsNoShardsAlive", "5m",
                                    {**node, "severity": "critical"})]},
        {"interval": "1m",
         "input_series": [
             series("odinws_kafka_consumer_lag", "20000+500x40", shard="0", topic="odin.trades",
                    partition="0"),
             series("odinws_kafka_consumer_lag", "20000+0x40", shard="1", topic="odin.trades",
                    partition="1")],
         "alert_rule_test": [
             expect("OdinwsKafkaLagGrowing", "5m"),
             expect("OdinwsKafkaLagGrowing", "30m",
                    {"instance": node["instance"], "topic": "odin.trades", "partition": "0",
                     "severity": "warning"})]},
        {"interval": "1m",
         "input_series": [
             series("odinws_events_dropped_total", "0+600x30", shard="0", policy="drop"),
             series("odinws_events_delivered_total", "0+6000x30", shard="0"),
             series("odinws_events_dropped_total", "0+600x30", shard="0", policy="drop",
                    instance="ws-2:3005"),
             series("odinws_events_delivered_total", "0+600000x30", shard="0",
                    instance="ws-2:3005")],
         "alert_rule_test": [expect("OdinwsEventsDropped", "25m",
                                    {"instance": node["instance"], "severity": "warning"})]},
        # 10 duplicates/s against 50 records/s consumed (the marks never went
        # back): fires; the same rate against 10,000 records/s: quiet.
        {"interval": "1m",
         "input_series": [
             series("odinws_events_duplicate_total", "0+600x30", shard="0"),
             series("odinws_kafka_records_total", "0+3000x30", shard="0", topic="odin.trades"),
             series("odinws_events_duplicate_total", "0+600x30", shard="0",
                    instance="ws-2:3005"),
             series("odinws_kafka_records_total", "0+600000x30", shard="0", topic="odin.trades",
                    instance="ws-2:3005")],
         "alert_rule_test": [
             expect("OdinwsDuplicatesSustained", "5m"),
             expect("OdinwsDuplicatesSustained", "25m",
                    {"instance": node["instance"], "severity": "critical"})]},
        # Failed fetches for 40 minutes fire; on a node where one fetch in
        # the window succeeded, they do not.
        {"interval": "5m",
         "input_series": [
             series("odinws_jwks_fetches_total", "0+1x12", shard="0", result="failed"),
             series("odinws_jwks_fetches_total", "5+0x12", shard="0", result="ok"),
             series("odinws_jwks_fetches_total", "0+1x12", shard="0", result="failed",
                    instance="ws-2:3005"),
             series("odinws_jwks_fetches_total", "5+0x8 6+0x4", shard="0", result="ok",
                    instance="ws-2:3005")],
         "alert_rule_test": [
             expect("OdinwsJwksFetchFailing", "50m",
                    {"instance": node["instance"], "severity": "warning"})]},
        # A shard at 90% of its descriptor limit fires; the parent at 10% does not.
        {"interval": "1m",
         "input_series": [
             series("process_open_fds", "900+0x20", shard="0"),
             series("process_max_fds", "1000+0x20", shard="0"),
             series("process_open_fds", "100+0x20"),
             series("process_max_fds", "1000+0x20")],
         "alert_rule_test": [
             expect("OdinwsFileDescriptorsNearLimit", "5m"),
             expect("OdinwsFileDescriptorsNearLimit", "15m",
                    {**node, "shard": "0", "severity": "warning"})]},
        # A shard's late warm-up stuck at 60 s for 10 minutes fires; one of
        # 10 s (a slow run, within twice the shipped timeout) does not.
        {"interval": "1m",
         "input_series": [
             series("odinws_history_late_warmup_seconds", "60+0x15", shard="1"),
             series("odinws_history_late_warmup_seconds", "10+0x15", shard="0")],
         "alert_rule_test": [
             expect("OdinwsLateWarmupOverdue", "1m"),
             expect("OdinwsLateWarmupOverdue", "10m",
                    {"instance": node["instance"], "shard": "1", "severity": "warning"})]},
        {"interval": "1m",
         "input_series": [
             series("odinws_offset_resets_total", "0+0x5 1+0x30", shard="0", reason="topic_changed")],
         "alert_rule_test": [
             expect("OdinwsKafkaLogReset", "3m"),
             expect("OdinwsKafkaLogReset", "10m", {"instance": node["instance"], "severity": "warning"})]},
    ]


class UnitTests(unittest.TestCase):
    """systemd/odinws.service against the config defaults."""

    def setUp(self):
        parser = configparser.ConfigParser(strict=False, interpolation=None,
                                           comment_prefixes=("#", ";"))
        parser.optionxform = str
        with open(UNIT) as f:
            parser.read_file(f)
        self.service = parser["Service"]

    def test_runsTheInstalledTwistd(self):
        """
        The unit runs the packaged twistd in the foreground with the packaged
        config, as the odinws user, reloads with SIGHUP and restarts on failure.
        """
        s = self.service
        self.assertEqual(s["ExecStart"], "/opt/venvs/odinws/bin/twistd --nodaemon --pidfile= "
                                         "odinws --config /etc/odinws/odinws.yaml")
        self.assertEqual(s["ExecReload"], "/bin/kill -HUP $MAINPID")
        self.assertEqual((s["User"], s["Group"], s["Restart"]), ("odinws", "odinws", "on-failure"))

    def test_notifiesSystemd(self):
        """
        The unit waits for the parent's READY=1 (Type=notify, from the main
        process only) longer than the startup grace, and restarts a parent
        whose watchdog pings stop (WatchdogSec, Restart=on-failure).
        """
        s = self.service
        self.assertEqual((s["Type"], s["NotifyAccess"]), ("notify", "main"))
        self.assertGreater(int(s["TimeoutStartSec"]),
                           configmod.BY_KEY["listen.startup_grace"].default)
        self.assertGreater(int(s["WatchdogSec"]), 0)
        self.assertEqual(s["Restart"], "on-failure")

    def test_stopLeavesTimeToDrain(self):
        """
        SIGTERM goes to the parent only and systemd waits longer than the
        parent's drain and kill timeouts (their defaults) before SIGKILL.
        """
        defaults = {o.key: o.default for o in configmod.SCHEMA}
        self.assertEqual(self.service["KillMode"], "mixed")
        self.assertGreater(int(self.service["TimeoutStopSec"]),
                           defaults["supervisor.drain_timeout"] + defaults["supervisor.kill_timeout"])

    def test_descriptorLimitAboveConnections(self):
        """LimitNOFILE leaves headroom above limits.max_connections (default)."""
        limit = int(self.service["LimitNOFILE"])
        self.assertGreaterEqual(limit, 2 * configmod.BY_KEY["limits.max_connections"].default)

    def test_systemdAccepts(self):
        """
        systemd-analyze verify reports nothing about the unit (unknown keys
        and bad values are warnings it only prints), with ExecStart pointed
        at an existing binary since the package is not installed here.
        Without systemd-analyze, the sandboxing directives are at least present.
        """
        for key in ("NoNewPrivileges", "ProtectSystem", "SystemCallFilter",
                    "RestrictAddressFamilies", "CapabilityBoundingSet"):
            self.assertIn(key, self.service)
        tool = shutil.which("systemd-analyze")
        if tool is None:
            return
        with open(UNIT) as f:
            text = f.read().replace("/opt/venvs/odinws/bin/twistd", "/bin/true")
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "odinws.service")
            with open(path, "w") as f:
                f.write(text)
            result = subprocess.run([tool, "verify", path], capture_output=True, text=True,
                                    timeout=120)
        self.assertEqual((result.returncode, result.stdout + result.stderr), (0, ""))


class PackagingTests(unittest.TestCase):
    """packaging/debian against the project metadata."""

    def test_changelogMatchesVersion(self):
        """
        The Debian changelog's newest entry is the project's version
        (odin_ws.__version__, which pyproject.toml reads), so a version bump
        cannot ship a package with the old number (build-deb.sh refuses
        too, but only when someone builds).
        """
        with open(os.path.join(ROOT, "packaging", "debian", "changelog")) as f:
            first = f.readline()
        match = re.match(r"odinws \(([^)]+)\)", first)
        self.assertIsNotNone(match, first)
        self.assertEqual(match.group(1), odin_ws.__version__)

    def test_installsThePinnedProject(self):
        """
        The package's pip runs are constrained by requirements.lock and use
        Debian's interpreter, not whichever python3 is first on PATH.
        """
        with open(os.path.join(ROOT, "packaging", "debian", "rules")) as f:
            rules = f.read()
        self.assertIn("--constraint=requirements.lock", rules)
        self.assertIn("readlink -f /usr/bin/python3", rules)
        self.assertIn("--python $(PY_EXE)", rules)


class OperationsDocTests(unittest.TestCase):
    """docs/operations.md against the config schema."""

    def test_reloadSectionListsLiveSettings(self):
        """
        The reload section names exactly the settings the schema marks live,
        so the docs cannot promise a reload the code does not do (or miss one).
        """
        with open(OPERATIONS) as f:
            text = f.read()
        section = text.split("## Reloading", 1)[1].split("\n## ", 1)[0]
        named = {key for key in re.findall(r"`([a-z_]+\.[a-z_]+)`", section)
                 if key in configmod.BY_KEY}
        self.assertEqual(named, {o.key for o in configmod.SCHEMA if o.live})
