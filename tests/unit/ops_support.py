"""
Shared helpers for the tests of the operations files (docker compose, Prometheus,
Grafana, Kubernetes, demo): paths, YAML loading, the metric names the toolkit
exports, and a PromQL scan for the metric names an expression selects.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from reliable.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
OPS = ROOT / "ops"
ALERTS = OPS / "prometheus" / "alerts.yml"
RABBITMQ_ALERTS = OPS / "prometheus" / "alerts-rabbitmq.yml"
SCRAPE = OPS / "prometheus" / "scrape.yml"
DASHBOARD = OPS / "grafana" / "reliable.json"
K8S = OPS / "k8s"

#: Metrics Prometheus itself provides that the rules and dashboard may use.
PROMETHEUS_METRICS = {"up"}

#: RabbitMQ's own exporter (rabbitmq_prometheus, /metrics/detailed, queue_coarse_metrics).
RABBITMQ_METRICS = {
    "rabbitmq_detailed_queue_messages",
    "rabbitmq_detailed_queue_messages_ready",
    "rabbitmq_detailed_queue_messages_unacked",
}

#: `reliable GROUP COMMAND` pairs the issues define; runbooks may only name these.
CLI_SURFACE = {
    ("db", "migrate"),
    ("db", "check"),
    ("topology", "validate"),
    ("topology", "plan"),
    ("topology", "apply"),
    ("topology", "export"),
    ("topology", "schema"),
    ("outbox", "relay"),
    ("outbox", "status"),
    ("outbox", "list"),
    ("outbox", "retry"),
    ("outbox", "purge"),
    ("inbox", "purge"),
    ("dlq", "list"),
    ("dlq", "show"),
    ("dlq", "replay"),
    ("dlq", "export"),
    ("dlq", "import"),
    ("dlq", "purge"),
    ("dlq", "move"),
    ("dlq", "history"),
}

_PROMQL_KEYWORDS = {
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "inf",
    "nan",
}


def yaml_files() -> list[Path]:
    files = sorted(p for p in OPS.rglob("*") if p.suffix in {".yml", ".yaml"})
    return [ROOT / "docker-compose.yml", *files]


def load_all(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def exported_names() -> set[str]:
    """Every sample name the toolkit's registry can expose, labelled or not."""
    suffixes = {
        "counter": ("_total", "_created"),
        "gauge": ("",),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "summary": ("", "_sum", "_count", "_created"),
    }
    names: set[str] = set()
    for family in Metrics().registry.collect():
        names.update(family.name + suffix for suffix in suffixes[family.type])
        names.update(sample.name for sample in family.samples)
    return names


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions, labels, keywords removed)."""
    text = re.sub(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # range and subquery selectors
    text = re.sub(
        r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text
    )
    names = set()
    for match in re.finditer(r"(?<![\w.$])[A-Za-z_:][A-Za-z0-9_:]*", text):
        rest = text[match.end() :].lstrip()
        if rest.startswith("("):
            continue  # a function call
        if match.group().lower() in _PROMQL_KEYWORDS:
            continue
        names.add(match.group())
    return names


def alert_rules(path: Path = ALERTS) -> list[dict[str, Any]]:
    doc = yaml.safe_load(path.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def all_alert_rules() -> list[dict[str, Any]]:
    return alert_rules(ALERTS) + alert_rules(RABBITMQ_ALERTS)


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())  # type: ignore[no-any-return]


def dashboard_panels() -> Iterator[dict[str, Any]]:
    for panel in dashboard()["panels"]:
        yield panel
        yield from panel.get("panels", [])


def dashboard_exprs() -> list[str]:
    return [t["expr"] for p in dashboard_panels() for t in p.get("targets", [])]


def k8s_docs() -> dict[str, list[dict[str, Any]]]:
    return {p.name: load_all(p) for p in sorted(K8S.glob("*.yaml"))}


def pod_specs() -> Iterator[tuple[str, dict[str, Any]]]:
    for name, docs in k8s_docs().items():
        for doc in docs:
            if doc["kind"] in {"Deployment", "Job"}:
                yield f"{name}:{doc['kind']}", doc["spec"]["template"]["spec"]


def commands(text: str) -> set[tuple[str, str]]:
    return set(re.findall(r"`reliable (\w+) (\w+)", text))


def require_tool(name: str, install_hint: str) -> str:
    """The path of an external checker, or skip the test (CI machines may lack it)."""
    found = shutil.which(name)
    if found is None:
        pytest.skip(f"{name} not on PATH ({install_hint})")
    return found


def run_tool(
    args: list[str], *, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )
