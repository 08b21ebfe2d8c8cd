"""`reliable topology` commands that need no broker, through click's CliRunner."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from reliable.cli import cli, exit_codes
from reliable.cli.topology import _render
from reliable.declare import LiveState, plan
from reliable.topology_file import loads


def test_plan_table_shows_routing_keys_literally(
    capsys: pytest.CaptureFixture[str],
) -> None:
    topology = loads(
        "exchanges: [{name: o, type: topic}]\nqueues: [{name: w, delivery_limit: 1}]\n"
        "bindings: [{source: o, destination: w, routing_key: 'a.*'}]"
    )
    p = plan(topology, LiveState(vhost="/", exists=False), broker_version=(3, 10, 8))

    _render([p], "table")

    assert "o -> w [a.*]" in capsys.readouterr().out


def test_validate_exit_code_and_problem_lines(tmp_path: Path) -> None:
    path = tmp_path / "t.yaml"
    path.write_text("queues: [{name: q, max_length: 0}]\n")

    result = CliRunner().invoke(cli, ["topology", "validate", str(path)])

    assert result.exit_code == exit_codes.EXIT_INVALID
    assert (
        f"{path}:1: queues[0].max_length: input should be greater than or equal to 1 (got 0)"
        in result.output
    )
