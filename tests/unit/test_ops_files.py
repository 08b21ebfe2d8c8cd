"""
The operations files (docker compose, Prometheus, Grafana, Kubernetes, demo) are
checked offline: they parse, they only name metrics the toolkit exports, every
alert is actionable, and no manifest carries a real secret.
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


def _yaml_files() -> list[Path]:
    files = sorted(p for p in OPS.rglob("*") if p.suffix in {".yml", ".yaml"})
    return [ROOT / "docker-compose.yml", *files]


def _load_all(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def _exported_names() -> set[str]:
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


def _alert_rules(path: Path = ALERTS) -> list[dict[str, Any]]:
    doc = yaml.safe_load(path.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def _all_alert_rules() -> list[dict[str, Any]]:
    return _alert_rules(ALERTS) + _alert_rules(RABBITMQ_ALERTS)


def _dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())  # type: ignore[no-any-return]


def _dashboard_panels() -> Iterator[dict[str, Any]]:
    for panel in _dashboard()["panels"]:
        yield panel
        yield from panel.get("panels", [])


def _dashboard_exprs() -> list[str]:
    return [t["expr"] for p in _dashboard_panels() for t in p.get("targets", [])]


def _k8s_docs() -> dict[str, list[dict[str, Any]]]:
    return {p.name: _load_all(p) for p in sorted(K8S.glob("*.yaml"))}


def _pod_specs() -> Iterator[tuple[str, dict[str, Any]]]:
    for name, docs in _k8s_docs().items():
        for doc in docs:
            if doc["kind"] in {"Deployment", "Job"}:
                yield f"{name}:{doc['kind']}", doc["spec"]["template"]["spec"]


def _commands(text: str) -> set[tuple[str, str]]:
    return set(re.findall(r"`reliable (\w+) (\w+)", text))


# --------------------------------------------------------------------- parsing


@pytest.mark.parametrize("path", _yaml_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_yaml_file_parses(path: Path) -> None:
    docs = _load_all(path)

    assert docs, f"{path} holds no YAML document"


def test_promql_parser_finds_metrics_and_skips_the_rest() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le) (rate(a_bucket{job="x_total"}[5m])))'
        " / on(instance) group_left(job) (b_total offset 1h) > bool 1e-9 and time() - c"
    )

    assert metric_names(expr) == {"a_bucket", "b_total", "c"}


# ---------------------------------------------------------------- prometheus


def test_alert_expressions_only_use_exported_metrics() -> None:
    known = _exported_names() | PROMETHEUS_METRICS

    unknown = {
        rule["alert"]: metric_names(rule["expr"]) - known
        for rule in _alert_rules()
        if metric_names(rule["expr"]) - known
    }

    assert unknown == {}


def test_rabbitmq_alerts_only_use_the_broker_exporter() -> None:
    used = {
        name
        for rule in _alert_rules(RABBITMQ_ALERTS)
        for name in metric_names(rule["expr"])
    }

    assert used
    assert used <= RABBITMQ_METRICS


def test_alert_names_are_unique() -> None:
    names = [rule["alert"] for rule in _all_alert_rules()]

    assert len(names) == len(set(names))


@pytest.mark.parametrize("rule", _all_alert_rules(), ids=lambda r: r["alert"])
def test_alert_is_actionable(rule: dict[str, Any]) -> None:
    annotations = rule.get("annotations", {})
    runbook_commands = _commands(annotations.get("runbook", ""))

    assert re.fullmatch(r"\d+[smh]", str(rule.get("for", ""))), "needs for:"
    assert rule.get("labels", {}).get("severity") in {"critical", "warning", "info"}
    assert annotations.get("summary")
    assert annotations.get("description")
    assert runbook_commands, "the runbook must name a `reliable ...` command"
    assert runbook_commands <= CLI_SURFACE


def test_alerts_cover_the_operational_failures() -> None:
    exprs = " ".join(rule["expr"] for rule in _alert_rules())
    severities = {rule["alert"]: rule["labels"]["severity"] for rule in _alert_rules()}

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
    # Groups not merged into this build yet are checked against CLI_SURFACE only.
    from reliable.cli import cli

    named = set()
    for rule in _all_alert_rules():
        named |= _commands(rule["annotations"]["runbook"])
    named |= _commands((ROOT / "docs" / "operations.md").read_text())

    missing = []
    for group, command in sorted(named):
        registered = cli.commands.get(group)
        if registered is not None and command not in registered.commands:  # type: ignore[attr-defined]
            missing.append(f"reliable {group} {command}")

    assert missing == []
    assert named <= CLI_SURFACE


def test_scrape_config_loads_the_alert_rules() -> None:
    config = yaml.safe_load(SCRAPE.read_text())
    jobs = {job["job_name"] for job in config["scrape_configs"]}

    assert config["rule_files"] == ["alerts.yml", "alerts-rabbitmq.yml"]
    assert {"reliable-relay", "reliable-host"} <= jobs


@pytest.fixture(name="promtool")
def _promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.skip("promtool not on PATH (Debian/Ubuntu: apt-get install prometheus)")
    return found


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
    result = subprocess.run(
        [promtool, *args],
        cwd=OPS / "prometheus",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 0, result.stdout + result.stderr


# ------------------------------------------------------------------- grafana


def test_dashboard_expressions_only_use_exported_metrics() -> None:
    known = _exported_names() | PROMETHEUS_METRICS | RABBITMQ_METRICS

    unknown = sorted(
        {name for expr in _dashboard_exprs() for name in metric_names(expr)} - known
    )

    assert unknown == []


def test_dashboard_shows_every_exported_metric() -> None:
    used = {name for expr in _dashboard_exprs() for name in metric_names(expr)}
    families = {family.name for family in Metrics().registry.collect()}

    missing = sorted(f for f in families if not any(n.startswith(f) for n in used))

    assert missing == [], "add a panel to ops/grafana/reliable.json"


def test_dashboard_takes_the_datasource_as_a_variable() -> None:
    dashboard = _dashboard()
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    queries = [p for p in _dashboard_panels() if p["type"] != "row"]

    assert 36 <= dashboard["schemaVersion"] <= 41
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert all(p["datasource"]["uid"] == "${datasource}" for p in queries)
    assert all(
        t["datasource"]["uid"] == "${datasource}" for p in queries for t in p["targets"]
    )


def test_dashboard_panels_have_unique_ids_and_do_not_overlap() -> None:
    panels = list(_dashboard_panels())
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
    exprs = " ".join(_dashboard_exprs())

    assert "histogram_quantile(0.5," in exprs
    assert "histogram_quantile(0.99," in exprs
    assert "reliable_outbox_batch_duration_seconds_bucket" in exprs


# ---------------------------------------------------------------- kubernetes


def test_k8s_files_hold_the_expected_kinds() -> None:
    kinds = {
        name: sorted(d["kind"] for d in docs) for name, docs in _k8s_docs().items()
    }

    assert kinds == {
        "db-migrate-job.yaml": ["Job"],
        "relay-deployment.yaml": [
            "Deployment",
            "PodDisruptionBudget",
            "Service",
            "ServiceMonitor",
        ],
        "replay-job.yaml": ["Job"],
        "secret.example.yaml": ["Secret"],
        "topology-configmap.yaml": ["ConfigMap"],
        "topology-job.yaml": ["Job"],
    }


def _container(file: str, kind: str) -> dict[str, Any]:
    (doc,) = [d for d in _k8s_docs()[file] if d["kind"] == kind]
    (container,) = doc["spec"]["template"]["spec"]["containers"]
    return container  # type: ignore[no-any-return]


def test_relay_deployment_runs_two_probed_relays_with_metrics() -> None:
    (deployment,) = [
        d for d in _k8s_docs()["relay-deployment.yaml"] if d["kind"] == "Deployment"
    ]
    pod = deployment["spec"]["template"]["spec"]
    relay = _container("relay-deployment.yaml", "Deployment")
    port = relay["args"][relay["args"].index("--metrics-port") + 1]

    assert relay["args"][:3] == ["reliable", "outbox", "relay"]
    assert relay["ports"][0]["containerPort"] == int(port) == 9108
    assert deployment["spec"]["replicas"] == 2
    assert pod["terminationGracePeriodSeconds"] >= 30
    assert {"livenessProbe", "readinessProbe"} <= relay.keys()
    assert {"cpu", "memory"} <= relay["resources"]["limits"].keys()
    assert relay["envFrom"] == [{"secretRef": {"name": "reliable-connection"}}]


def test_jobs_run_the_documented_commands() -> None:
    replay = _container("replay-job.yaml", "Job")["args"]
    topology = _container("topology-job.yaml", "Job")
    migrate = _container("db-migrate-job.yaml", "Job")["args"]

    assert replay[:3] == ["reliable", "dlq", "replay"]
    assert {"--yes", "--rate"} <= set(replay)
    assert topology["args"] == ["reliable", "topology", "apply", "topology/", "--yes"]
    assert (
        topology["volumeMounts"][0]["mountPath"] == topology["workingDir"] + "/topology"
    )
    assert migrate == ["reliable", "db", "migrate"]


def test_pre_deploy_hooks_run_configmap_then_migrate_then_topology() -> None:
    def weight(file: str) -> int:
        (doc,) = _k8s_docs()[file]
        assert "pre-upgrade" in doc["metadata"]["annotations"]["helm.sh/hook"]
        return int(doc["metadata"]["annotations"]["helm.sh/hook-weight"])

    assert (
        weight("topology-configmap.yaml")
        < weight("db-migrate-job.yaml")
        < weight("topology-job.yaml")
    )


def test_k8s_manifests_match_the_kubernetes_schemas(tmp_path: Path) -> None:
    validate = shutil.which("kubernetes-validate")
    if validate is None:
        pytest.skip("kubernetes-validate not on PATH (pip install kubernetes-validate)")
    files = []
    for path in sorted(K8S.glob("*.yaml")):
        # The validator needs metadata.name; generateName is what `kubectl create` uses.
        copy = tmp_path / path.name
        copy.write_text(path.read_text().replace("generateName: ", "name: "))
        files.append(str(copy))

    result = subprocess.run(
        [validate, "--strict", "--kubernetes-version", "1.30", *files],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert "ERROR" not in result.stdout + result.stderr


def test_secrets_hold_placeholders_only() -> None:
    secrets = [
        d for docs in _k8s_docs().values() for d in docs if d["kind"] == "Secret"
    ]

    assert secrets
    for secret in secrets:
        values = {**secret.get("stringData", {}), **secret.get("data", {})}
        assert values
        assert all("CHANGE_ME" in str(v) for v in values.values()), values


@pytest.mark.parametrize(
    ("where", "pod"), list(_pod_specs()), ids=[w for w, _ in _pod_specs()]
)
def test_workloads_take_connection_urls_from_a_secret(
    where: str, pod: dict[str, Any]
) -> None:
    for container in pod["containers"]:
        literal = {
            e["name"]
            for e in container.get("env", [])
            if "value" in e
            and (e["name"].endswith(("_URL", "PASSWORD")) or "://" in str(e["value"]))
        }

        assert literal == set(), f"{where}: use a secretKeyRef or envFrom"
        assert {"secretRef": {"name": "reliable-connection"}} in container["envFrom"]


def _files_for_secret_scan() -> list[Path]:
    skip = {".pyc", ".png"}
    files = [p for p in OPS.rglob("*") if p.is_file() and p.suffix not in skip]
    return [ROOT / "docker-compose.yml", *sorted(files)]


@pytest.mark.parametrize(
    "path", _files_for_secret_scan(), ids=lambda p: str(p.relative_to(ROOT))
)
def test_no_credentials_beyond_the_dev_defaults(path: Path) -> None:
    text = path.read_text()
    passwords = set(re.findall(r"\b[a-z][a-z0-9+.-]*://[^:/@\s]+:([^@\s]+)@", text))
    env_passwords = set(re.findall(r"(?im)^\s*[A-Z_]*PASSWORD[A-Z_]*:\s*(\S+)", text))

    assert passwords <= {"guest", "CHANGE_ME_PASSWORD", "PASSWORD"}
    assert env_passwords == set()


# -------------------------------------------------------------- docker compose


def _compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())  # type: ignore[no-any-return]


def test_compose_services_are_healthchecked_on_loopback() -> None:
    services = _compose()["services"]

    assert re.fullmatch(
        r"\$\{RABBITMQ_IMAGE:-rabbitmq:4\.\d+-management\}",
        services["rabbitmq"]["image"],
    )
    assert services["postgres"]["image"].endswith("postgres:16}")
    for name in ("rabbitmq", "postgres"):
        assert services[name]["healthcheck"]["test"], name
        assert "profiles" not in services[name], "core services start by default"
    published = [p for s in services.values() for p in s.get("ports", [])]
    assert published
    assert all(p.startswith("127.0.0.1:") for p in published)
    assert {
        "127.0.0.1:5672:5672",
        "127.0.0.1:15672:15672",
        "127.0.0.1:5432:5432",
    } <= set(published)


def test_compose_file_matches_the_compose_spec() -> None:
    check = shutil.which("check-jsonschema")
    if check is None:
        pytest.skip("check-jsonschema not on PATH (pip install check-jsonschema)")

    result = subprocess.run(
        [
            check,
            "--builtin-schema",
            "vendor.compose-spec",
            str(ROOT / "docker-compose.yml"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_optional_services_sit_behind_profiles() -> None:
    services = _compose()["services"]

    assert services["relay"]["profiles"] == ["relay"]
    assert services["relay"]["command"] == [
        "reliable",
        "outbox",
        "relay",
        "--metrics-port",
        "9108",
    ]
    assert services["prometheus"]["profiles"] == ["monitoring"]
    assert services["grafana"]["profiles"] == ["monitoring"]
    for service in ("prometheus", "grafana"):
        for volume in services[service]["volumes"]:
            source = volume.split(":")[0]
            assert (ROOT / source).exists(), volume
    assert (ROOT / services["relay"]["build"]["dockerfile"]).exists()


# ---------------------------------------------------------------------- demo


def test_demo_script_is_valid_bash() -> None:
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("bash not on PATH")

    result = subprocess.run(
        [bash, "-n", str(OPS / "demo" / "run.sh")],
        capture_output=True,
        text=True,
        check=False,
    )

    assert result.returncode == 0, result.stderr


def test_demo_script_passes_shellcheck() -> None:
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip(
            "shellcheck not on PATH (Debian/Ubuntu: apt-get install shellcheck)"
        )

    result = subprocess.run(
        [shellcheck, str(OPS / "demo" / "run.sh")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 0, result.stdout + result.stderr


def test_demo_script_runs_the_documented_steps() -> None:
    script = (OPS / "demo" / "run.sh").read_text()

    for step in (
        "reliable db migrate",
        "reliable topology apply topology/ --yes",
        "outbox relay --metrics-port",
        "celery -A shop worker",
        'reliable dlq list "$DLQ"',
        'reliable dlq replay "$DLQ" --dry-run',
        'reliable dlq replay "$DLQ" --yes',
        "trap on_exit EXIT",
        "docker compose up -d --wait",
    ):
        assert step in script, step


@pytest.mark.parametrize("name", ["shop.py", "check.py"])
def test_demo_python_compiles(name: str) -> None:
    source = (OPS / "demo" / name).read_text()

    compile(source, name, "exec")


def test_demo_topologies_pass_the_topology_validator(tmp_path: Path) -> None:
    topology_file = pytest.importorskip("reliable.topology_file")
    (configmap,) = _k8s_docs()["topology-configmap.yaml"]
    files = [OPS / "demo" / "topology.yaml"]
    for name, text in configmap["data"].items():
        files.append(tmp_path / name)
        files[-1].write_text(text)

    for path in files:
        topology_file.load_topology(path)  # raises TopologyFileError with every problem


def test_demo_topology_and_configmap_example_agree() -> None:
    demo = yaml.safe_load((OPS / "demo" / "topology.yaml").read_text())
    (configmap,) = _k8s_docs()["topology-configmap.yaml"]

    assert yaml.safe_load(configmap["data"]["shop.yaml"]) == demo


def test_demo_routes_match_the_topology() -> None:
    topology = yaml.safe_load((OPS / "demo" / "topology.yaml").read_text())
    queues = {q["name"]: q for q in topology["queues"]}
    bindings = {
        (b["source"], b["destination"], b["routing_key"]) for b in topology["bindings"]
    }
    shop = (OPS / "demo" / "shop.py").read_text()

    # shop.py routes the charge task through shop.tasks with key shop.payments.
    assert 'Exchange("shop.tasks"' in shop
    assert 'routing_key="shop.payments"' in shop
    assert ("shop.tasks", "shop.payments", "shop.payments") in bindings
    assert queues["shop.payments"]["dead_letter"] == {
        "exchange": "shop.dlx",
        "routing_key": "shop.payments",
    }
    assert ("shop.dlx", "shop.payments.dlq", "shop.payments") in bindings
    assert ("shop.events", "shop.audit", "order.#") in bindings
