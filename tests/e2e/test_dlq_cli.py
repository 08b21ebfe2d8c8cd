"""`reliable dlq ...` in a subprocess against the real broker."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from tests.integration.dlq_support import (
    DLQ,
    connect,
    dead_letter,
    depth,
    drain,
    publish,
    reject_all,
    setup,
    snapshot,
    wait_depth,
    wait_for,
)


def run(broker, *args: str, **kw):
    cmd = [
        sys.executable,
        "-m",
        "reliable",
        "--amqp-url",
        broker.amqp_url,
        "--management-url",
        broker.management_url,
        "dlq",
        *args,
    ]
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=120, check=False, **kw
    )


def start(broker, *args: str):
    cmd = [
        sys.executable,
        "-m",
        "reliable",
        "--amqp-url",
        broker.amqp_url,
        "dlq",
        *args,
    ]
    return subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


@pytest.fixture(name="ch")
def _ch(broker):
    conn = connect(broker.amqp_url)
    ch = conn.channel()
    setup(ch)
    yield ch
    conn.close()


def test_list_show_replay_history_from_the_command_line(broker, ch) -> None:
    dead_letter(
        ch,
        "work",
        b'{"a": 1}',
        message_id="w1",
        headers={"task": "app.add", "id": "t1"},
    )
    dead_letter(ch, "other", b"\xff\x00", message_id="o1")
    wait_depth(ch, DLQ, 2)
    # A second DLQ reached only through a policy's dead-letter-exchange.
    ch.exchange_declare("dlx2", "fanout", durable=True)
    ch.queue_declare("dlq2", durable=True)
    ch.queue_bind("dlq2", "dlx2")
    ch.queue_declare("by-policy", durable=True)
    broker.management.put_policy(
        broker.vhost,
        "dl",
        pattern="^by-policy$",
        definition={"dead-letter-exchange": "dlx2"},
        apply_to="queues",
    )
    wait_for(
        lambda: (broker.management.queue(broker.vhost, "by-policy") or {}).get(
            "effective_policy_definition"
        ),
        what="the policy to apply",
    )

    listed = run(broker, "list", "--output", "json")
    shown = run(broker, "show", DLQ, "--output", "json")
    full = run(broker, "show", DLQ, "--full")
    dry = run(broker, "replay", DLQ, "--dry-run", "--output", "json")
    replay = run(
        broker, "replay", DLQ, "--source-queue", "work", "--yes", "--output", "json"
    )
    history = run(broker, "history")

    assert listed.returncode == 0, listed.stderr
    rows = {r["queue"]: r for r in json.loads(listed.stdout)}
    assert set(rows) == {DLQ, "dlq2"}
    assert rows["dlq2"]["sources"] == ["by-policy"]
    row = rows[DLQ]
    assert (row["depth"], row["sources"]) == (2, ["other", "work"])
    assert {g["source_queue"]: g["count"] for g in row["by_source_queue"]} == {
        "work": 1,
        "other": 1,
    }
    assert shown.returncode == 0, shown.stderr
    details = {d["message_id"]: d for d in json.loads(shown.stdout)}
    assert details["w1"]["body"] == {"kind": "json", "value": {"a": 1}}
    assert details["w1"]["task"] == "app.add"
    assert details["o1"]["body"]["kind"] == "base64"
    assert full.returncode == 0
    assert "x-death" in full.stdout
    assert dry.returncode == 0
    assert json.loads(dry.stdout)["counts"]["would_replay"] == 2
    assert replay.returncode == 0, replay.stderr
    assert json.loads(replay.stdout)["counts"]["replayed"] == 1
    assert [p.message_id for p, _b in drain(ch, "work")] == ["w1"]
    assert depth(ch, DLQ) == 1
    assert history.returncode == 7
    assert history.stderr.startswith("error: no database configured")


@pytest.mark.parametrize(
    ("args", "code", "start_of_message"),
    [
        (["replay", "missing", "--yes"], 3, "error: queue 'missing' does not exist"),
        (
            ["replay", DLQ, "--to", "nowhere", "--yes"],
            3,
            "error: target queue 'nowhere' does not exist",
        ),
        (
            ["replay", DLQ, "--to-exchange", "nowhere", "--yes"],
            3,
            "error: target exchange 'nowhere' does not exist",
        ),
        (["replay", DLQ], 2, "Usage:"),
        (["purge", DLQ], 2, "Usage:"),
        (["show", DLQ, "--older-than", "soon"], 2, "Usage:"),
        (
            ["import", "no-such-file.jsonl", "--yes"],
            1,
            "error: file 'no-such-file.jsonl' does not exist",
        ),
    ],
    ids=[
        "queue",
        "target-queue",
        "target-exchange",
        "no-yes",
        "purge-no-yes",
        "bad-age",
        "no-file",
    ],
)
def test_bad_input_is_one_line_and_an_exit_code(
    broker, ch, args, code, start_of_message
) -> None:
    dead_letter(ch, "work", b"x", message_id="x")
    wait_depth(ch, DLQ, 1)

    result = run(broker, *args, stdin=subprocess.DEVNULL)

    assert result.returncode == code, result.stderr
    assert result.stderr.startswith(start_of_message)
    assert "Traceback" not in result.stderr
    assert depth(ch, DLQ) == 1


def test_broker_down_is_exit_code_3() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "reliable",
            "--amqp-url",
            "amqp://guest:guest@127.0.0.1:1/%2F",
            "dlq",
            "replay",
            DLQ,
            "--yes",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 3
    assert result.stderr.startswith("error: cannot reach RabbitMQ")
    assert len(result.stderr.strip().splitlines()) == 1


def _fill(ch, n: int) -> set[str]:
    for i in range(n):
        publish(ch, "work", f"m{i}".encode(), message_id=f"m{i}")
    wait_depth(ch, "work", n)
    reject_all(ch, "work")
    wait_depth(ch, DLQ, n)
    return {f"m{i}" for i in range(n)}


def test_sigkill_mid_replay_loses_nothing(broker, ch) -> None:
    ids = _fill(ch, 600)
    proc = start(broker, "replay", DLQ, "--yes", "--rate", "300")  # ~2 s, batches of 60
    wait_for(lambda: depth(ch, "work") >= 60, what="the replay to get going")

    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    wait_for(
        lambda: depth(ch, "work") + depth(ch, DLQ) >= 600,
        what="unacked messages to return",
    )
    replayed = [p.message_id for p, _b in drain(ch, "work")]
    left = [p.message_id for p, _b in drain(ch, DLQ)]

    assert set(replayed) | set(left) == ids
    duplicates = len(replayed) + len(left) - len(ids)
    # Killed mid-run: copies had reached the origin, the DLQ was not yet empty.
    assert replayed
    assert left
    assert duplicates <= 60  # at most the batch whose acks were not sent


def test_sigterm_stops_after_in_flight_confirms_and_prints_the_summary(
    broker, ch
) -> None:
    ids = _fill(ch, 300)
    proc = start(broker, "replay", DLQ, "--yes", "--rate", "300", "--output", "json")
    wait_for(lambda: depth(ch, "work") >= 30, what="the replay to get going")

    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    summary = json.loads(out)
    replayed = [p.message_id for p, _b in drain(ch, "work")]
    left = [p.message_id for p, _b in drain(ch, DLQ)]

    assert proc.returncode == 130, err
    assert summary["interrupted"] is True
    assert summary["counts"]["replayed"] == len(replayed)
    assert sorted(replayed + left) == sorted(ids)


def test_export_remove_then_import_round_trips_byte_for_byte(
    broker, ch, tmp_path
) -> None:
    when = datetime(2025, 5, 6, 7, 8, 9, tzinfo=UTC)
    headers = {
        "id": "t-1",
        "dec": Decimal("12.345"),
        "at": when,
        "raw": b"\x00\xff",
        "flag": True,
        "big": 2**40,
        "neg": -3,
        "nested": {"list": [1, "two", None, {"deep": b"\x01"}]},
    }
    dead_letter(
        ch,
        "work",
        b"\x89PNG\r\n\x1a\n\x00\xff",
        message_id="bin",
        correlation_id="c",
        headers=headers,
    )
    dead_letter(
        ch, "work", "ünïcode".encode(), message_id="text", content_type="text/plain"
    )
    wait_depth(ch, DLQ, 2)
    path = tmp_path / "dead.jsonl"
    as_dead = {m: h for _b, m, _c, h in snapshot(ch, DLQ)}

    exported = run(broker, "export", DLQ, "-o", str(path), "--remove", "--yes")
    after_export = depth(ch, DLQ)
    first = run(
        broker,
        "import",
        str(path),
        "--limit",
        "1",
        "--message-id",
        "text",
        "--yes",
        "--output",
        "json",
    )
    assert json.loads(first.stdout)["counts"]["replayed"] == 1
    assert [p.message_id for p, _b in drain(ch, "work")] == ["text"]
    imported = run(broker, "import", str(path), "--yes", "--output", "json")
    back = {p.message_id: (p, b) for p, b in drain(ch, "work")}

    again = run(broker, "export", DLQ, "-o", str(path))
    assert exported.returncode == 0, exported.stderr
    assert again.returncode == 1
    assert again.stderr.startswith(f"error: {str(path)!r} already exists")
    assert len(path.read_text().splitlines()) == 2
    assert after_export == 0
    assert imported.returncode == 0, imported.stderr
    assert json.loads(imported.stdout)["counts"]["replayed"] == 2
    props, body = back["bin"]
    assert body == b"\x89PNG\r\n\x1a\n\x00\xff"
    assert props.correlation_id == "c"
    for key, value in as_dead["bin"].items():
        if key.startswith(("x-death", "x-first-death")):
            continue
        assert props.headers[key] == value, key
        assert type(props.headers[key]) is type(value), key
    assert (
        props.headers["x-reliable-death-history"][0]["x-death"]
        == as_dead["bin"]["x-death"]
    )
    assert set(headers) <= set(props.headers)
    assert back["text"][1] == "ünïcode".encode()
    assert back["text"][0].content_type == "text/plain"


def test_huge_and_oddly_typed_messages_are_shown_and_moved_intact(broker, ch) -> None:
    huge = bytes(range(256)) * 32768  # 8 MiB, not UTF-8
    weird = {
        "x-death": "truncated",
        "n": Decimal("-0.5"),
        "t": datetime(2030, 1, 1, tzinfo=UTC),
        "list": [[], {}],
    }
    dead_letter(ch, "work", huge, message_id="huge")
    publish(ch, DLQ, b"\xc3\x28", message_id="weird", headers=weird)
    wait_depth(ch, DLQ, 2)

    shown = run(broker, "show", DLQ, "--full")
    shown_json = run(broker, "show", DLQ, "--output", "json")
    replay = run(broker, "replay", DLQ, "--yes")
    moved = run(broker, "move", DLQ, "other", "--yes")

    assert shown.returncode == 0, shown.stderr
    assert "Traceback" not in shown.stderr + shown_json.stderr
    kinds = {d["message_id"]: d["body"]["kind"] for d in json.loads(shown_json.stdout)}
    assert kinds == {"huge": "base64", "weird": "base64"}
    assert "body_truncated_at: 65536" in shown.stdout
    assert replay.returncode == 8  # the weird one has no origin and stays
    assert "weird: no x-death and no --to" in replay.stderr
    assert moved.returncode == 0, moved.stderr
    [(props, body)] = drain(ch, "work")
    assert (props.message_id, body) == ("huge", huge)
    [(props, body)] = drain(ch, "other")
    assert body == b"\xc3\x28"
    assert props.headers["n"] == Decimal("-0.5")
    assert props.headers["x-death"] == "truncated"


def test_runs_are_audited_when_a_database_is_configured(broker, ch, database) -> None:
    dead_letter(ch, "work", b"x", message_id="x")
    wait_depth(ch, DLQ, 1)
    db = ["--database-url", database.url, "--db-schema", database.schema]

    def run_db(*args):
        cmd = [
            sys.executable,
            "-m",
            "reliable",
            "--amqp-url",
            broker.amqp_url,
            *db,
            "dlq",
            *args,
        ]
        return subprocess.run(
            cmd, capture_output=True, text=True, timeout=120, check=False
        )

    replay = run_db("replay", DLQ, "--yes", "--reason", "rejected")
    history = run_db("history", "--output", "json")

    assert replay.returncode == 0, replay.stderr
    [row] = json.loads(history.stdout)
    assert (row["command"], row["queue"], row["counts"]["replayed"]) == (
        "replay",
        DLQ,
        1,
    )
    assert row["filters"] == {"reason": ["rejected"]}


def test_list_and_show_group_and_filter_by_failure_records(
    broker, ch, database
) -> None:
    import psycopg

    for n in range(3):
        dead_letter(
            ch,
            "work",
            b"[[1], {}, {}]",
            correlation_id=f"task-{n}",
            headers={"id": f"task-{n}", "task": "shop.charge"},
        )
    wait_depth(ch, DLQ, 3)
    with psycopg.connect(database.url, autocommit=True) as conn:
        for n, exc in ((0, "KeyError"), (1, "KeyError"), (2, "TimeoutError")):
            conn.execute(
                psycopg.sql.SQL(
                    "INSERT INTO {}.reliable_task_failures (consumer, task_name, task_id, queue,"
                    " exception_type, exception_message, attempts) VALUES ('c', 'shop.charge', %s, 'work', %s, 'boom', 3)"
                ).format(psycopg.sql.Identifier(database.schema)),
                (f"task-{n}", exc),
            )
    db = ["--database-url", database.url, "--db-schema", database.schema]

    def run_db(*args):
        cmd = [
            sys.executable,
            "-m",
            "reliable",
            "--amqp-url",
            broker.amqp_url,
            "--management-url",
            broker.management_url,
            *db,
            "dlq",
            *args,
        ]
        return subprocess.run(
            cmd, capture_output=True, text=True, timeout=120, check=False
        )

    listed = run_db("list", DLQ, "--output", "json")
    shown = run_db("show", DLQ, "--exception", "KeyError", "--output", "json")

    assert listed.returncode == 0, listed.stderr
    [row] = json.loads(listed.stdout)
    assert row["by_exception_type"] == [
        {"exception_type": "KeyError", "count": 2},
        {"exception_type": "TimeoutError", "count": 1},
    ]
    assert sorted(d["task_id"] for d in json.loads(shown.stdout)) == [
        "task-0",
        "task-1",
    ]
    assert {d["celery"]["task"] for d in json.loads(shown.stdout)} == {"shop.charge"}


def test_a_named_queue_is_listed_with_its_type_and_sources(broker, ch) -> None:
    dead_letter(ch, "work", b"{}", message_id="w1")
    wait_depth(ch, DLQ, 1)

    listed = run(broker, "list", DLQ, "--output", "json")

    assert listed.returncode == 0, listed.stderr
    (row,) = json.loads(listed.stdout)
    assert (row["queue"], row["type"], row["sources"], row["depth"]) == (
        DLQ,
        "classic",
        ["other", "work"],
        1,
    )
