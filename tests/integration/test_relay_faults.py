"""
Crash the broker or PostgreSQL under a draining relay (own throwaway servers):
the relay reconnects with backoff and every message arrives at least once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter

import psycopg
import pytest

from reliable.schema import SchemaManager
from tests.conftest import Broker, Database
from tests.integration.outbox_support import (
    declare,
    outbox_rows,
    queue_depth,
    read_queue,
    wait_for,
    write,
)
from tests.integration.own_services import (
    OwnPostgres,
    OwnRabbit,
    own_postgres,
    own_rabbit,
)

__all__ = ["own_postgres", "own_rabbit"]  # fixtures used below

pytestmark = pytest.mark.slow


def _start_relay(
    amqp_url: str, database_url: str, schema: str
) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELIABLE_")}
    env.update(
        RELIABLE_AMQP_URL=amqp_url,
        RELIABLE_DATABASE_URL=database_url,
        RELIABLE_DB_SCHEMA=schema,
    )
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "reliable",
            "outbox",
            "relay",
            "--batch-size",
            "100",
            "--lease",
            "5s",
            "--confirm-timeout",
            "3s",
            # Right after a restart, quorum queues that are still recovering make
            # the broker return messages as unroutable (312 NO_ROUTE) for a few
            # seconds: retry those quickly and never let them die here.
            "--backoff",
            "0.2s",
            "--max-backoff",
            "1s",
            "--max-attempts",
            "1000",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _stop(relay: subprocess.Popen[str]) -> str:
    relay.send_signal(signal.SIGTERM)
    try:
        _, stderr = relay.communicate(timeout=30)
    finally:
        if relay.poll() is None:
            relay.kill()
            relay.communicate()
    print(stderr[-6000:])  # shown by pytest when the test fails
    assert relay.returncode == 0, stderr
    return stderr


def _rows_left(url: str, schema: str) -> int | None:
    try:
        with psycopg.connect(url, connect_timeout=2) as conn:
            return conn.execute(
                f'SELECT count(*) FROM "{schema}".reliable_outbox'
            ).fetchone()[0]
    except psycopg.OperationalError:
        return None  # down or restarting


def test_broker_crash_mid_drain_loses_nothing(
    own_rabbit: OwnRabbit, database: Database
) -> None:
    declare(own_rabbit.amqp_url, "orders")
    n = 4000
    ids = write(
        database, [{"routing_key": "orders", "body": {"n": i}} for i in range(n)]
    )
    relay = _start_relay(own_rabbit.amqp_url, database.url, database.schema)
    try:
        wait_for(
            lambda: queue_depth(own_rabbit.amqp_url, "orders") >= 300,
            what="drain started",
        )
        own_rabbit.crash()
        assert outbox_rows(database) != [], "the crash came mid-drain"
        own_rabbit.start()
        wait_for(lambda: outbox_rows(database) == [], timeout=60, what="outbox drained")
    finally:
        stderr = _stop(relay)
    assert "relay.reconnect" in stderr or "relay.connect_retry" in stderr

    got = Counter(
        m
        for m, _ in read_queue(
            own_rabbit.amqp_url, "orders", expect=n, timeout=30, settle=1.0
        )
    )
    assert set(got) == set(ids), f"lost {len(set(ids) - set(got))}"
    print(f"duplicates after broker crash: {sum(got.values()) - n}")


def test_postgres_restart_mid_drain_loses_nothing(
    own_postgres: OwnPostgres, broker: Broker
) -> None:
    declare(broker.amqp_url, "orders")
    schema = "reliable_fault"
    with psycopg.connect(own_postgres.url) as conn:
        SchemaManager(conn, schema=schema).migrate()
        conn.commit()
    database = Database(own_postgres.url, schema)
    n = 4000
    ids = write(
        database, [{"routing_key": "orders", "body": {"n": i}} for i in range(n)]
    )
    relay = _start_relay(broker.amqp_url, own_postgres.url, schema)
    try:
        wait_for(
            lambda: queue_depth(broker.amqp_url, "orders") >= 300, what="drain started"
        )
        own_postgres.restart()
        left = _rows_left(own_postgres.url, schema)
        assert left is None or left > 0, "the restart came mid-drain"
        wait_for(
            lambda: _rows_left(own_postgres.url, schema) == 0,
            timeout=60,
            what="outbox drained",
        )
    finally:
        stderr = _stop(relay)
    assert "relay.reconnect" in stderr

    got = Counter(
        m
        for m, _ in read_queue(
            broker.amqp_url, "orders", expect=n, timeout=30, settle=1.0
        )
    )
    assert set(got) == set(ids), f"lost {len(set(ids) - set(got))}"
    print(f"duplicates after PostgreSQL restart: {sum(got.values()) - n}")
