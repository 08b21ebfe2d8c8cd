"""Loading topology files: every problem, with file, line and key path."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import yaml

from reliable.errors import TopologyFileError
from reliable.topology_file import (
    dump_topology,
    json_schema,
    load_topologies,
    load_topology,
    loads,
)

EXAMPLES = Path(__file__).parents[2] / "topology"


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_file_error_points_at_the_misspelt_key_with_its_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "orders.yaml",
        """\
        queues:
          - name: orders
            dead_leter: {exchange: dlx}
        """,
    )

    with pytest.raises(TopologyFileError) as info:
        load_topology(path)

    location, message = info.value.problems[0]
    assert location == f"{path}:3: queues[0].dead_leter"
    assert message == "unknown key 'dead_leter'; did you mean 'dead_letter'?"


def test_all_problems_of_all_files_are_reported_at_once(tmp_path: Path) -> None:
    write(
        tmp_path,
        "a.yaml",
        """\
        exchanges:
          - {name: events, type: fanot}
        queues:
          - {name: q1, max_length: -3}
          - {name: q2, message_ttl: 10 minutes}
        """,
    )
    write(
        tmp_path,
        "b.yml",
        """\
        queues:
          - name: q3
            arguments: {x-dead-letter-strateggy: at-least-once}
        policies:
          - {name: p, pattern: "^q", definition: {expire: 5}}
        """,
    )

    with pytest.raises(TopologyFileError) as info:
        load_topologies([tmp_path])

    locations = [loc.split(": ", 1)[1] for loc, _ in info.value.problems]
    assert locations == [
        "exchanges[0].type",
        "queues[0].max_length",
        "queues[1].message_ttl",
        "queues[0].arguments",
        "policies[0].definition",
    ]
    assert all(
        "did you mean" in m
        for loc, m in info.value.problems
        if "type" in loc or "b.yml" in loc
    )


def test_model_rule_is_reported_at_the_queue(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "q.yaml",
        """\
        queues:
          - name: ok
          - name: payments
            exclusive: true
        """,
    )

    with pytest.raises(TopologyFileError) as info:
        load_topology(path)

    assert info.value.problems == [
        (f"{path}:3: queues[1]", "quorum queues cannot be exclusive")
    ]


def test_files_of_one_vhost_merge_and_may_reference_each_other(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", "exchanges: [{name: events, type: topic}]\n")
    write(
        tmp_path,
        "b.yaml",
        "queues: [{name: work}]\nbindings: [{source: events, destination: work}]\n",
    )
    write(tmp_path, "c.yaml", "vhost: other\nqueues: [{name: work}]\n")

    topologies = {t.vhost: t for t in load_topologies([tmp_path])}

    assert set(topologies) == {"/", "other"}
    assert [b.source for b in topologies["/"].bindings] == ["events"]


def test_duplicates_across_files_point_at_both_files(tmp_path: Path) -> None:
    first = write(tmp_path, "a.yaml", "queues: [{name: work}]\n")
    second = write(tmp_path, "b.yaml", "\nqueues:\n  - name: work\n")

    with pytest.raises(TopologyFileError) as info:
        load_topologies([tmp_path])

    assert info.value.problems == [
        (
            f"{second}:3: queues[0].name",
            f"'work' is declared twice; first declared at {first}:1",
        )
    ]


def test_undeclared_reference_is_reported_with_its_location(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "a.yaml",
        """\
        exchanges: [{name: events, type: topic}]
        queues: [{name: work}]
        bindings:
          - {source: events, destination: work}
          - {source: event, destination: work}
        """,
    )

    with pytest.raises(TopologyFileError) as info:
        load_topology(path)

    assert info.value.problems == [
        (
            f"{path}:5: bindings[1].source",
            "exchange 'event' is declared nowhere; did you mean 'events'?",
        )
    ]


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("queues: [", "invalid YAML"),
        ("- just\n- a list\n", "must be a mapping"),
        ("queues:\n  - name: a\n    name: b\n", "appears twice"),
        ("queues: {name: a}\n", "valid list"),
    ],
    ids=["syntax", "not-a-mapping", "duplicate-key", "wrong-type"],
)
def test_malformed_documents_give_a_clean_error(text: str, fragment: str) -> None:
    with pytest.raises(TopologyFileError) as info:
        loads(text, "t.yaml")

    assert any(fragment in m for _, m in info.value.problems)


def test_missing_path_and_empty_directory_are_problems(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()

    with pytest.raises(TopologyFileError) as info:
        load_topologies([tmp_path / "nope.yaml", tmp_path / "empty"])

    assert [m for _, m in info.value.problems] == [
        "no such file or directory",
        "directory holds no .yaml or .yml files",
    ]


def test_shipped_examples_validate() -> None:
    topology = load_topology(EXAMPLES)

    assert {q.name for q in topology.queues} >= {
        "orders.work",
        "orders.dlq",
        "notifications.send",
        "audit.log",
    }


def test_dump_then_load_gives_the_same_topology() -> None:
    topology = load_topology(EXAMPLES)

    assert loads(dump_topology(topology)) == topology


def test_dump_writes_units_and_keeps_queue_types() -> None:
    text = dump_topology(
        loads("queues: [{name: q, message_ttl: 600000, max_length_bytes: 1073741824}]")
    )

    queue = yaml.safe_load(text)["queues"][0]
    assert queue == {
        "name": "q",
        "type": "quorum",
        "message_ttl": "10m",
        "max_length_bytes": "1GiB",
    }


def test_json_schema_is_for_editors() -> None:
    schema = json_schema()

    assert schema["title"] == "reliable topology"
    assert schema["additionalProperties"] is False


def test_shipped_schema_file_is_current() -> None:
    shipped = json.loads((EXAMPLES / "topology.schema.json").read_text())

    assert shipped == json_schema(), (
        "regenerate: reliable topology schema > topology/topology.schema.json"
    )
