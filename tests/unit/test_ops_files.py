"""
The Prometheus and Grafana files are checked offline: every YAML file under ops/
parses, the rules and the dashboard name only metrics the toolkit exports, and
every alert is actionable (for, severity, summary, runbook naming a real command).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from reliable.metrics import Metrics
from tests.unit import ops_support as ops

# --------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    "path", ops.yaml_files(), ids=lambda p: str(p.relative_to(ops.ROOT))
)
def test_yaml_file_parses(path: Path) -> None:
    docs = ops.load_all(path)

    assert docs, f"{path} holds no YAML document"


def test_promql_parser_finds_metrics_and_skips_the_rest() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le) (rate(a_bucket{job="x_total"}[5m])))'
        " / on(instance) group_left(job) (b_total offset 1h) > bool 1e-9 and time() - c"
    )

    assert ops.metric_names(expr) == {"a_bucket", "b_total", "c"}


# ---------------------------------------------------------------- prometheus


def test_alert_expressions_only_use_exported_metrics() -> None:
    known = ops.exported_names() | ops.PROMETHEUS_METRICS

    unknown = {
        rule["alert"]: ops.metric_names(rule["expr"]) - known
        for rule in ops.alert_rules()
        if ops.metric_names(rule["expr"]) - known
    }

    assert unknown == {}


def test_rabbitmq_alerts_only_use_the_broker_exporter() -> None:
    used = {
        name
        for rule in ops.alert_rules(ops.RABBITMQ_ALERTS)
        for name in ops.metric_names(rule["expr"])
    }

    assert used
    assert used <= ops.RABBITMQ_METRICS


def test_alert_names_are_unique() -> None:
    names = [rule["alert"] for rule in ops.all_alert_rules()]

    assert len(names) == len(set(names))


@pytest.mark.parametrize("rule", ops.all_alert_rules(), ids=lambda r: r["alert"])
def test_alert_is_actionable(rule: dict[str, Any]) -> None:
    annotations = rule.get("annotations", {})
    runbook_commands = ops.commands(annotations.get("runbook", ""))

    assert re.fullmatch(r"\d+[smh]", str(rule.get("for", ""))), "needs for:"
    assert rule.get("labels", {}).get("severity") in {"critical", "warning", "info"}
    assert annotations.get("summary")
    assert annotations.get("description")
    assert runbook_commands, "the runbook must name a `reliable ...` command"
    assert runbook_commands <= ops.CLI_SURFACE


def test_alerts_cover_the_operational_failures() -> None:
    exprs = " ".join(rule["expr"] for rule in ops.alert_rules())
    severities = {
        rule["alert"]: rule["labels"]["severity"] for rule in ops.alert_rules()
    }

    for needed in (
        "reliable_outbox_backlog",
        "reliable_outbox_oldest_unsent_age_seconds",
        "reliable_outbox_dead_rows",
        "reliable_relay_last_batch_timestamp_seconds",
        "up{",
        "reliable_outbox_failures_total",
        "reliable_dlq_depth",
        "reliable_inbox_failures_total",
        "reliable_inbox_duplicates_total",
    ):
        assert needed in exprs, needed
    assert severities["ReliableInboxDuplicatesSpike"] == "info"


def test_runbook_commands_exist_in_the_cli() -> None:
    # Groups not merged into this build yet are checked against ops.CLI_SURFACE only.
    from reliable.cli import cli

    named = set()
    for rule in ops.all_alert_rules():
        named |= ops.commands(rule["annotations"]["runbook"])
    named |= ops.commands((ops.ROOT / "docs" / "operations.md").read_text())

    missing = []
    for group, command in sorted(named):
        registered = cli.commands.get(group)
        if registered is not None and command not in registered.commands:  # type: ignore[attr-defined]
            missing.append(f"reliable {group} {command}")

    assert missing == []
    assert named <= ops.CLI_SURFACE


def test_scrape_config_loads_the_alert_rules() -> None:
    config = yaml.safe_load(ops.SCRAPE.read_text())
    jobs = {job["job_name"] for job in config["scrape_configs"]}

    assert config["rule_files"] == ["alerts.yml", "alerts-rabbitmq.yml"]
    assert {"reliable-relay", "reliable-host"} <= jobs


@pytest.fixture(name="promtool")
def _promtool() -> str:
    return ops.require_tool("promtool", "Debian/Ubuntu: apt-get install prometheus")


@pytest.mark.parametrize(
    "args",
    [
        ["check", "rules", "alerts.yml", "alerts-rabbitmq.yml"],
        ["check", "config", "scrape.yml"],
        ["test", "rules", "alerts_test.yml"],
    ],
    ids=["check-rules", "check-config", "test-rules"],
)
def test_promtool_accepts_the_prometheus_files(promtool: str, args: list[str]) -> None:
    result = ops.run_tool([promtool, *args], cwd=ops.OPS / "prometheus")

    assert result.returncode == 0, result.stdout + result.stderr


# ------------------------------------------------------------------- grafana


def test_dashboard_expressions_only_use_exported_metrics() -> None:
    known = ops.exported_names() | ops.PROMETHEUS_METRICS | ops.RABBITMQ_METRICS

    unknown = sorted(
        {name for expr in ops.dashboard_exprs() for name in ops.metric_names(expr)}
        - known
    )

    assert unknown == []


def test_dashboard_shows_every_exported_metric() -> None:
    used = {name for expr in ops.dashboard_exprs() for name in ops.metric_names(expr)}
    families = {family.name for family in Metrics().registry.collect()}

    missing = sorted(f for f in families if not any(n.startswith(f) for n in used))

    assert missing == [], "add a panel to ops/grafana/reliable.json"


def test_dashboard_takes_the_datasource_as_a_variable() -> None:
    dashboard = ops.dashboard()
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    queries = [p for p in ops.dashboard_panels() if p["type"] != "row"]

    assert 36 <= dashboard["schemaVersion"] <= 41
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert all(p["datasource"]["uid"] == "${datasource}" for p in queries)
    assert all(
        t["datasource"]["uid"] == "${datasource}" for p in queries for t in p["targets"]
    )


def test_dashboard_panels_have_unique_ids_and_do_not_overlap() -> None:
    panels = list(ops.dashboard_panels())
    cells: dict[tuple[int, int], int] = {}
    overlaps = []
    for panel in panels:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                if (x, y) in cells:
                    overlaps.append((panel["title"], cells[(x, y)]))
                cells[(x, y)] = panel["id"]

    assert len({p["id"] for p in panels}) == len(panels)
    assert overlaps == []


def test_dashboard_latency_panel_uses_the_histogram_quantiles() -> None:
    exprs = " ".join(ops.dashboard_exprs())

    assert "histogram_quantile(0.5," in exprs
    assert "histogram_quantile(0.99," in exprs
    assert "reliable_outbox_batch_duration_seconds_bucket" in exprs
