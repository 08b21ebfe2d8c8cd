"""
Kubernetes manifests and docker-compose.yml: expected kinds and commands, probes
and limits, hooks in order, connection URLs only from Secrets, placeholders only,
ports on loopback, optional services behind profiles.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.unit import ops_support as ops

# ---------------------------------------------------------------- kubernetes


def test_k8s_files_hold_the_expected_kinds() -> None:
    kinds = {
        name: sorted(d["kind"] for d in docs) for name, docs in ops.k8s_docs().items()
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
    (doc,) = [d for d in ops.k8s_docs()[file] if d["kind"] == kind]
    (container,) = doc["spec"]["template"]["spec"]["containers"]
    return container  # type: ignore[no-any-return]


def test_relay_deployment_runs_two_probed_relays_with_metrics() -> None:
    (deployment,) = [
        d for d in ops.k8s_docs()["relay-deployment.yaml"] if d["kind"] == "Deployment"
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
        (doc,) = ops.k8s_docs()[file]
        assert "pre-upgrade" in doc["metadata"]["annotations"]["helm.sh/hook"]
        return int(doc["metadata"]["annotations"]["helm.sh/hook-weight"])

    assert (
        weight("topology-configmap.yaml")
        < weight("db-migrate-job.yaml")
        < weight("topology-job.yaml")
    )


def test_k8s_manifests_match_the_kubernetes_schemas(tmp_path: Path) -> None:
    validate = ops.require_tool(
        "kubernetes-validate", "pip install kubernetes-validate"
    )
    files = []
    for path in sorted(ops.K8S.glob("*.yaml")):
        # The validator needs metadata.name; generateName is what `kubectl create` uses.
        copy = tmp_path / path.name
        copy.write_text(path.read_text().replace("generateName: ", "name: "))
        files.append(str(copy))

    result = ops.run_tool(
        [validate, "--strict", "--kubernetes-version", "1.30", *files]
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert "ERROR" not in result.stdout + result.stderr


def test_secrets_hold_placeholders_only() -> None:
    secrets = [
        d for docs in ops.k8s_docs().values() for d in docs if d["kind"] == "Secret"
    ]

    assert secrets
    for secret in secrets:
        values = {**secret.get("stringData", {}), **secret.get("data", {})}
        assert values
        assert all("CHANGE_ME" in str(v) for v in values.values()), values


@pytest.mark.parametrize(
    ("where", "pod"), list(ops.pod_specs()), ids=[w for w, _ in ops.pod_specs()]
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
    files = [p for p in ops.OPS.rglob("*") if p.is_file() and p.suffix not in skip]
    return [ops.ROOT / "docker-compose.yml", *sorted(files)]


@pytest.mark.parametrize(
    "path", _files_for_secret_scan(), ids=lambda p: str(p.relative_to(ops.ROOT))
)
def test_no_credentials_beyond_the_dev_defaults(path: Path) -> None:
    text = path.read_text()
    passwords = set(re.findall(r"\b[a-z][a-z0-9+.-]*://[^:/@\s]+:([^@\s]+)@", text))
    env_passwords = set(re.findall(r"(?im)^\s*[A-Z_]*PASSWORD[A-Z_]*:\s*(\S+)", text))

    assert passwords <= {"guest", "CHANGE_ME_PASSWORD", "PASSWORD"}
    assert env_passwords == set()


# -------------------------------------------------------------- docker compose


def _compose() -> dict[str, Any]:
    return yaml.safe_load((ops.ROOT / "docker-compose.yml").read_text())  # type: ignore[no-any-return]


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
    check = ops.require_tool("check-jsonschema", "pip install check-jsonschema")
    compose = str(ops.ROOT / "docker-compose.yml")

    result = ops.run_tool([check, "--builtin-schema", "vendor.compose-spec", compose])

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
            assert (ops.ROOT / source).exists(), volume
    assert (ops.ROOT / services["relay"]["build"]["dockerfile"]).exists()
