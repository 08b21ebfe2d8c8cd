"""
The `make demo` files: the script is valid bash that runs the documented steps, the
demo app compiles, and its topology, ConfigMap copy and routes agree.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.unit import ops_support as ops

# ---------------------------------------------------------------------- demo


def test_demo_script_is_valid_bash() -> None:
    bash = ops.require_tool("bash", "install bash")

    result = ops.run_tool([bash, "-n", str(ops.OPS / "demo" / "run.sh")])

    assert result.returncode == 0, result.stderr


def test_demo_script_passes_shellcheck() -> None:
    shellcheck = ops.require_tool(
        "shellcheck", "Debian/Ubuntu: apt-get install shellcheck"
    )

    result = ops.run_tool([shellcheck, str(ops.OPS / "demo" / "run.sh")])

    assert result.returncode == 0, result.stdout + result.stderr


def test_demo_script_runs_the_documented_steps() -> None:
    script = (ops.OPS / "demo" / "run.sh").read_text()

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
    source = (ops.OPS / "demo" / name).read_text()

    compile(source, name, "exec")


def test_demo_topologies_pass_the_topology_validator(tmp_path: Path) -> None:
    topology_file = pytest.importorskip("reliable.topology_file")
    (configmap,) = ops.k8s_docs()["topology-configmap.yaml"]
    files = [ops.OPS / "demo" / "topology.yaml"]
    for name, text in configmap["data"].items():
        files.append(tmp_path / name)
        files[-1].write_text(text)

    for path in files:
        topology_file.load_topology(path)  # raises TopologyFileError with every problem


def test_demo_topology_and_configmap_example_agree() -> None:
    demo = yaml.safe_load((ops.OPS / "demo" / "topology.yaml").read_text())
    (configmap,) = ops.k8s_docs()["topology-configmap.yaml"]

    assert yaml.safe_load(configmap["data"]["shop.yaml"]) == demo


def test_demo_routes_match_the_topology() -> None:
    topology = yaml.safe_load((ops.OPS / "demo" / "topology.yaml").read_text())
    queues = {q["name"]: q for q in topology["queues"]}
    bindings = {
        (b["source"], b["destination"], b["routing_key"]) for b in topology["bindings"]
    }
    shop = (ops.OPS / "demo" / "shop.py").read_text()

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
