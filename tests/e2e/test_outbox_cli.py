"""`reliable outbox ...` in a subprocess: the relay process and the admin commands."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections import Counter
from typing import Any

from psycopg import sql

from tests.conftest import Broker, Database
from tests.integration.outbox_support import (
    declare,
    outbox_rows,
    queue_depth,
    read_queue,
    wait_for,
    write,
)
from tests.integration.own_services import free_port


def _env(broker: Broker, database: Database) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELIABLE_")}
    env.update(
        RELIABLE_AMQP_URL=broker.amqp_url,
        RELIABLE_DATABASE_URL=database.url,
        RELIABLE_DB_SCHEMA=database.schema,
    )
    return env


def _cli(
    broker: Broker, database: Database, *args: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "reliable", *args],
        env=_env(broker, database),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _json(proc: subprocess.CompletedProcess[str]) -> Any:
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _relay(broker: Broker, database: Database, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "reliable", "outbox", "relay", *args],
        env=_env(broker, database),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_sigkill_between_publish_and_mark_loses_nothing(
    broker: Broker, database: Database
) -> None:
    declare(broker.amqp_url, "orders")
    n = 300
    ids = write(
        database, [{"routing_key": "orders", "body": {"n": i}} for i in range(n)]
    )
    # FOR KEY SHARE lets the relay's claim (a no-key update) through but blocks
    # its DELETE: the relay gets stuck exactly between confirm and mark.
    blocker = database.connect()
    blocker.execute(
        sql.SQL("SELECT id FROM {}.reliable_outbox FOR KEY SHARE").format(
            sql.Identifier(database.schema)
        )
    )
    relay = _relay(
        broker,
        database,
        "--batch-size",
        "100",
        "--lease",
        "3s",
        "--confirm-timeout",
        "2s",
    )
    try:
        wait_for(
            lambda: queue_depth(broker.amqp_url, "orders") >= 100,
            what="first batch confirmed",
        )
        relay.send_signal(signal.SIGKILL)
        relay.communicate(timeout=10)
        # The dead relay's DELETE still waits in its backend; end it as a
        # crash of the whole host would, so the mark never happens.
        blocker.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE wait_event_type = 'Lock' AND query LIKE %s",
            [f"%{database.schema}%reliable_outbox%"],
        )
    finally:
        if relay.poll() is None:
            relay.kill()
            relay.communicate()
        blocker.rollback()
        blocker.close()
    assert len(outbox_rows(database)) == n, "the killed relay marked nothing"

    restarted = _relay(broker, database, "--lease", "3s", "--confirm-timeout", "2s")
    try:
        wait_for(lambda: outbox_rows(database) == [], timeout=40, what="outbox drained")
        restarted.send_signal(signal.SIGTERM)
        _, stderr = restarted.communicate(timeout=20)
        assert restarted.returncode == 0, stderr
    finally:
        if restarted.poll() is None:
            restarted.kill()
            restarted.communicate()

    got = Counter(
        m for m, _ in read_queue(broker.amqp_url, "orders", expect=n, settle=1.0)
    )
    assert set(got) == set(ids), "every message arrived"
    duplicates = sum(got.values()) - n
    # Only the batch confirmed but never marked may come twice.
    assert 0 < duplicates <= 100, duplicates


def test_sigterm_finishes_the_batch_in_flight_and_exits_zero(
    broker: Broker, database: Database
) -> None:
    declare(broker.amqp_url, "orders")
    n = 3000
    ids = set(
        write(database, [{"routing_key": "orders", "body": {"n": i}} for i in range(n)])
    )
    port = free_port()
    relay = _relay(broker, database, "--batch-size", "200", "--metrics-port", str(port))
    try:
        wait_for(
            lambda: queue_depth(broker.amqp_url, "orders") > 0,
            what="publishing started",
        )
        metrics = (
            urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10)
            .read()
            .decode()
        )
        assert "reliable_outbox_published_total{" in metrics
        relay.send_signal(signal.SIGTERM)
        _, stderr = relay.communicate(timeout=30)
    finally:
        if relay.poll() is None:
            relay.kill()
            relay.communicate()
    assert relay.returncode == 0, stderr

    left = {r["message_id"] for r in outbox_rows(database)}
    assert outbox_rows(database, "claim_token IS NOT NULL") == []
    got = Counter(
        m for m, _ in read_queue(broker.amqp_url, "orders", expect=n - len(left))
    )
    assert max(got.values()) == 1
    assert set(got) | left == ids
    assert not set(got) & left
    assert '"action": "relay.stop"' in stderr  # JSON log lines


def test_admin_commands_status_list_retry_purge(
    broker: Broker, database: Database
) -> None:
    declare(broker.amqp_url, "orders")
    good = write(
        database, [{"routing_key": "orders", "body": {"n": i}} for i in range(2)]
    )
    [stuck] = write(database, [{"routing_key": "refunds", "body": {"n": 9}}])

    pending = _json(_cli(broker, database, "outbox", "list", "--output", "json"))
    assert {r["message_id"] for r in pending} == {*good, stuck}

    once = _cli(broker, database, "outbox", "relay", "--once", "--max-attempts", "1")
    assert once.returncode == 0, once.stderr
    assert stuck in once.stderr  # the JSON log line names the message id
    assert sorted(
        m for m, _ in read_queue(broker.amqp_url, "orders", expect=2)
    ) == sorted(good)

    status = _json(_cli(broker, database, "outbox", "status", "--output", "json"))
    assert status["backlog"] == 0
    assert status["dead"] == 1
    assert [(d["routing_key"], d["dead"]) for d in status["destinations"]] == [
        ("refunds", 1)
    ]
    table = _cli(broker, database, "outbox", "status")
    assert "dead 1" in table.stdout

    dead = _json(_cli(broker, database, "outbox", "list", "--dead", "--output", "json"))
    assert [r["message_id"] for r in dead] == [stuck]
    assert "NO_ROUTE" in dead[0]["last_error"]

    # Nothing is older than 7 days: the purge keeps it.
    assert _json(
        _cli(
            broker,
            database,
            "outbox",
            "purge",
            "--dead",
            "--older-than",
            "7d",
            "--output",
            "json",
        )
    ) == {"deleted": 0}

    declare(broker.amqp_url, "refunds")
    retried = _json(
        _cli(broker, database, "outbox", "retry", stuck, "--output", "json")
    )
    assert [r["message_id"] for r in retried["retried"]] == [stuck]
    assert _cli(broker, database, "outbox", "relay", "--once").returncode == 0
    assert [m for m, _ in read_queue(broker.amqp_url, "refunds", expect=1)] == [stuck]

    # --all-dead and purge of old dead rows.
    [again] = write(database, [{"routing_key": "nowhere", "body": {}}])
    _cli(broker, database, "outbox", "relay", "--once", "--max-attempts", "1")
    assert [
        r["message_id"]
        for r in _json(
            _cli(broker, database, "outbox", "retry", "--all-dead", "--output", "json")
        )["retried"]
    ] == [again]
    _cli(broker, database, "outbox", "relay", "--once", "--max-attempts", "1")
    purged = _cli(broker, database, "outbox", "purge", "--dead", "--older-than", "0s")
    assert purged.returncode == 0, purged.stderr
    assert "deleted 1 dead rows" in purged.stdout
    assert outbox_rows(database) == []


def test_cli_errors_are_one_line_with_an_exit_code(
    broker: Broker, database: Database
) -> None:
    missing = _cli(broker, database, "outbox", "retry", "no-such-id")
    assert missing.returncode == 1
    assert "not found" in missing.stderr
    usage = _cli(broker, database, "outbox", "purge")
    assert usage.returncode == 2
    env = _env(broker, database)
    env["RELIABLE_DATABASE_URL"] = "postgresql://nobody:secret@127.0.0.1:1/x"
    down = subprocess.run(
        [sys.executable, "-m", "reliable", "outbox", "status"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert down.returncode == 4
    assert "Traceback" not in down.stderr
    assert "secret" not in down.stderr
