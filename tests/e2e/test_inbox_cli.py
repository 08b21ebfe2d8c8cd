"""``reliable inbox`` in a subprocess against real PostgreSQL."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from psycopg import sql

from tests.conftest import Database


def run(database: Database, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELIABLE_")}
    env.update(RELIABLE_DATABASE_URL=database.url, RELIABLE_DB_SCHEMA=database.schema)
    return subprocess.run(
        [sys.executable, "-m", "reliable", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def seed(database: Database) -> None:
    with database.connect(autocommit=True) as conn:
        conn.execute(
            sql.SQL(
                "INSERT INTO {}.reliable_inbox (consumer, message_id, processed_at)"
                " SELECT 'billing', 'old-' || i, now() - interval '8 days' FROM generate_series(1, 7) i"
                " UNION ALL SELECT 'shipping', 'new-' || i, now() FROM generate_series(1, 3) i"
            ).format(sql.Identifier(database.schema))
        )


def test_purge_older_than_deletes_only_old_rows(database: Database) -> None:
    seed(database)

    dry = run(
        database,
        "inbox",
        "purge",
        "--older-than",
        "7d",
        "--dry-run",
        "--output",
        "json",
    )
    done = run(database, "inbox", "purge", "--older-than", "7d", "--batch-size", "3")
    status = run(database, "inbox", "status", "--output", "json")

    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout) == {"deleted": 0, "would_delete": 7}
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "deleted 7 inbox rows older than 604800s"
    assert status.returncode == 0, status.stderr
    assert [(r["consumer"], r["rows"]) for r in json.loads(status.stdout)] == [
        ("shipping", 3)
    ]


def test_bad_duration_is_a_usage_error(database: Database) -> None:
    result = run(database, "inbox", "purge", "--older-than", "seven days")

    assert result.returncode == 2
    assert "is not a duration" in result.stderr
    assert "Traceback" not in result.stderr


def test_failures_lists_recorded_failures_as_json(database: Database) -> None:
    with database.connect(autocommit=True) as conn:
        conn.execute(
            sql.SQL(
                "INSERT INTO {}.reliable_task_failures (consumer, task_name, task_id, queue,"
                " exception_type, exception_message, attempts)"
                " VALUES ('c', 'shop.charge', 't-1', 'payments', 'builtins.ValueError', 'bad', 3)"
            ).format(sql.Identifier(database.schema))
        )

    result = run(database, "inbox", "failures", "--output", "json")

    assert result.returncode == 0, result.stderr
    (row,) = json.loads(result.stdout)
    assert (row["task_id"], row["exception_type"], row["attempts"]) == (
        "t-1",
        "builtins.ValueError",
        3,
    )
