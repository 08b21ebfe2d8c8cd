"""`reliable topology ...` in a subprocess: exit codes, output formats, refusals."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pika

from reliable.cli import exit_codes
from tests.conftest import Broker


def run(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "reliable", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        stdin=subprocess.DEVNULL,
        timeout=60,
        cwd=cwd,
        check=False,
    )


def broker_env(broker: Broker) -> dict[str, str]:
    return {
        "RELIABLE_AMQP_URL": broker.amqp_url,
        "RELIABLE_MANAGEMENT_URL": broker.management_url,
    }


def write(tmp_path: Path, text: str, name: str = "topology.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_validate_reports_every_problem_with_file_and_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "queues:\n  - name: q\n    dead_leter: {exchange: x}\n  - {name: r, exclusive: true}\n",
    )

    result = run("topology", "validate", str(path))

    assert result.returncode == exit_codes.EXIT_INVALID
    lines = result.stderr.splitlines()
    assert (
        f"{path}:3: queues[0].dead_leter: unknown key 'dead_leter'; did you mean 'dead_letter'?"
        in lines
    )
    assert f"{path}:4: queues[1]: quorum queues cannot be exclusive" in lines
    assert "Traceback" not in result.stderr


def test_validate_accepts_the_shipped_examples() -> None:
    result = run("topology", "validate", str(Path(__file__).parents[2] / "topology"))

    assert result.returncode == 0, result.stderr
    assert "6 queues" in result.stdout


def test_schema_prints_json_schema() -> None:
    result = run("topology", "schema")

    assert result.returncode == 0
    assert json.loads(result.stdout)["title"] == "reliable topology"


def test_plan_apply_cycle_with_detailed_exit_codes(
    tmp_path: Path, broker: Broker
) -> None:
    env = broker_env(broker)
    path = write(
        tmp_path,
        f"vhost: {broker.vhost}\nexchanges: [{{name: shop, type: topic}}]\n"
        "queues: [{name: shop.work, delivery_limit: 5}]\n"
        "bindings: [{source: shop, destination: shop.work, routing_key: 'a.*'}]\n",
    )

    pending = run("topology", "plan", str(path), "--detailed-exitcode", env=env)
    data = json.loads(
        run("topology", "plan", str(path), "--output", "json", env=env).stdout
    )
    refused = run("topology", "apply", str(path), env=env)
    after_refusal = broker.management.queue_definitions(broker.vhost)
    dry = run("topology", "apply", str(path), "--dry-run", env=env)
    applied = run("topology", "apply", str(path), "--yes", env=env)
    clean = run("topology", "plan", str(path), "--detailed-exitcode", env=env)

    assert pending.returncode == 2, pending.stderr
    assert [c["action"] for c in data["plans"][0]["changes"]] == ["create"] * 3
    assert refused.returncode == exit_codes.EXIT_USAGE
    assert "pass --yes" in refused.stderr
    assert after_refusal == []
    assert dry.returncode == 0
    assert applied.returncode == 0, applied.stderr
    assert "created queue shop.work" in applied.stdout.splitlines()
    assert clean.returncode == 0, clean.stdout + clean.stderr


def test_a_conflict_exits_1_with_detailed_exitcode_and_6_without(
    tmp_path: Path, broker: Broker
) -> None:
    env = broker_env(broker)
    first = write(
        tmp_path,
        f"vhost: {broker.vhost}\nqueues: [{{name: q, type: classic}}]\n",
        "a.yaml",
    )
    second = write(
        tmp_path,
        f"vhost: {broker.vhost}\nqueues: [{{name: q, delivery_limit: 5}}]\n",
        "b.yaml",
    )
    assert run("topology", "apply", str(first), "--yes", env=env).returncode == 0

    detailed = run("topology", "plan", str(second), "--detailed-exitcode", env=env)
    plain = run("topology", "plan", str(second), "--output", "json", env=env)
    applied = run("topology", "apply", str(second), "--yes", env=env)

    assert detailed.returncode == 1
    assert plain.returncode == exit_codes.EXIT_CONFLICT
    (change,) = [
        c for c in json.loads(plain.stdout)["plans"][0]["changes"] if c["name"] == "q"
    ]
    assert change["action"] == "conflict"
    assert "reliable dlq move q q.v2" in change["remedy"]
    assert applied.returncode == exit_codes.EXIT_CONFLICT
    assert (
        applied.stderr.strip()
        .splitlines()[-1]
        .startswith("error: 1 object(s) cannot be applied")
    )


def test_a_bad_file_gives_one_clear_line(tmp_path: Path, broker: Broker) -> None:
    path = write(tmp_path, "queues: [{name: q, message_ttl: soon}]\n")

    result = run("topology", "plan", str(path), env=broker_env(broker))

    assert result.returncode == exit_codes.EXIT_INVALID
    assert result.stderr.splitlines() == [
        f"error: 1 problem(s) in the topology: {path}:1: queues[0].message_ttl: invalid duration 'soon'; "
        "write 500ms, 30s, 10m, 2h, 7d or integer milliseconds"
    ]


def test_an_unreachable_broker_gives_one_clear_line(tmp_path: Path) -> None:
    path = write(tmp_path, "queues: [{name: q, delivery_limit: 1}]\n")
    env = {
        "RELIABLE_MANAGEMENT_URL": "http://guest:secret@127.0.0.1:1",
        "RELIABLE_AMQP_URL": "amqp://guest:secret@127.0.0.1:1/%2F",
    }

    result = run("topology", "plan", str(path), env=env)
    detailed = run("topology", "plan", str(path), "--detailed-exitcode", env=env)

    assert result.returncode == exit_codes.EXIT_BROKER
    assert len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith(
        "error: cannot reach the RabbitMQ management API at http://guest:***@127.0.0.1:1"
    )
    assert "secret" not in result.stderr
    assert detailed.returncode == 1


def test_export_writes_a_file_that_validates(tmp_path: Path, broker: Broker) -> None:
    env = broker_env(broker)
    path = write(
        tmp_path,
        f"vhost: {broker.vhost}\nexchanges: [{{name: e, type: fanout}}]\n"
        "queues: [{name: q, type: classic, max_priority: 5, message_ttl: 10m}]\n"
        "bindings: [{source: e, destination: q}]\n",
    )
    assert run("topology", "apply", str(path), "--yes", env=env).returncode == 0
    out = tmp_path / "exported" / "export.yaml"
    out.parent.mkdir()

    exported = run(
        "topology", "export", "--vhost", broker.vhost, "-o", str(out), env=env
    )
    validated = run("topology", "validate", str(out))

    assert exported.returncode == 0, exported.stderr
    assert "message_ttl: 10m" in out.read_text()
    assert validated.returncode == 0, validated.stderr


def test_prune_lists_first_and_keeps_a_queue_holding_messages(
    tmp_path: Path, broker: Broker
) -> None:
    env = broker_env(broker)
    path = write(
        tmp_path,
        f"vhost: {broker.vhost}\nqueues: [{{name: kept, delivery_limit: 5}}]\n",
    )
    extra = write(
        tmp_path,
        f"vhost: {broker.vhost}\nqueues: [{{name: empty, type: classic}}, {{name: full, type: classic}}]\n",
        "extra.yaml",
    )
    assert (
        run("topology", "apply", str(path), str(extra), "--yes", env=env).returncode
        == 0
    )
    connection = pika.BlockingConnection(pika.URLParameters(broker.amqp_url))
    channel = connection.channel()
    channel.confirm_delivery()
    channel.basic_publish("", "full", b"keep me")
    connection.close()

    dry = run("topology", "apply", str(path), "--prune", "--dry-run", env=env)
    after_dry = {q["name"] for q in broker.management.queue_definitions(broker.vhost)}
    pruned = run("topology", "apply", str(path), "--prune", "--yes", env=env)

    assert dry.returncode == 0, dry.stderr
    assert (
        f"prune would delete queue empty in vhost '{broker.vhost}'"
        in dry.stderr.splitlines()
    )
    assert after_dry == {"kept", "empty", "full"}
    assert pruned.returncode == 0, pruned.stderr
    assert "deleted queue empty" in pruned.stdout.splitlines()
    assert "kept unmanaged queue 'full'" in pruned.stderr
    assert {q["name"] for q in broker.management.queue_definitions(broker.vhost)} == {
        "kept",
        "full",
    }
