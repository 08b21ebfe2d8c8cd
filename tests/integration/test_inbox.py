"""`Inbox` without Celery, against real PostgreSQL: claims, concurrency, retention."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from psycopg import sql

from reliable.inbox import Inbox
from reliable.metrics import Metrics
from tests.conftest import Database


def effects(database: Database) -> int:
    with database.connect() as conn:
        row = conn.execute(
            sql.SQL("SELECT count(*) FROM {}.effects").format(
                sql.Identifier(database.schema)
            )
        ).fetchone()
        assert row is not None
        return int(row[0])


def poll_lock_wait(database: Database) -> bool:
    query = sql.SQL(
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
        " AND query LIKE {}"
    ).format(sql.Literal(f"%{database.schema}%reliable_inbox%"))
    deadline = time.monotonic() + 10
    with database.connect(autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute(query).fetchone()
            if row is not None and row[0] >= 1:
                return True
            time.sleep(0.05)
    return False


@pytest.fixture(name="inbox")
def _inbox(database: Database) -> Inbox:
    with database.connect(autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE TABLE {}.effects (id bigserial PRIMARY KEY)").format(
                sql.Identifier(database.schema)
            )
        )
    return Inbox(schema=database.schema, metrics=Metrics())


def handle(
    database: Database, inbox: Inbox, message_id: str, *, fail: bool = False
) -> bool:
    """A plain consumer's handler: claim and write in one transaction."""
    with database.connect() as conn, conn.transaction():
        with inbox.claim(conn, "billing", message_id) as first:
            if first:
                conn.execute(
                    sql.SQL("INSERT INTO {}.effects DEFAULT VALUES").format(
                        sql.Identifier(database.schema)
                    )
                )
                if fail:
                    raise RuntimeError("handler failed")
        return first


def test_claim_is_true_once_then_false(database: Database, inbox: Inbox) -> None:
    firsts = [handle(database, inbox, "m-1") for _ in range(3)]

    assert firsts == [True, False, False]
    assert effects(database) == 1
    assert inbox.metrics is not None
    assert (
        inbox.metrics.value("reliable_inbox_processed_total", {"consumer": "billing"})
        == 1
    )
    assert (
        inbox.metrics.value("reliable_inbox_duplicates_total", {"consumer": "billing"})
        == 2
    )


def test_rolled_back_claim_is_forgotten(database: Database, inbox: Inbox) -> None:
    with pytest.raises(RuntimeError):
        handle(database, inbox, "m-2", fail=True)

    assert handle(database, inbox, "m-2") is True
    assert effects(database) == 1
    assert inbox.metrics is not None
    assert (
        inbox.metrics.value(
            "reliable_inbox_failures_total",
            {"consumer": "billing", "exception": "RuntimeError"},
        )
        == 1
    )


def test_other_consumers_claim_the_same_message_independently(
    database: Database, inbox: Inbox
) -> None:
    with (
        database.connect() as conn,
        conn.transaction(),
        inbox.claim(conn, "billing", "m-3") as a,
        inbox.claim(conn, "shipping", "m-3") as b,
    ):
        pass

    assert (a, b) == (True, True)


def test_concurrent_duplicate_waits_for_the_first_and_then_skips(
    database: Database, inbox: Inbox
) -> None:
    results: dict[str, Any] = {}
    first_claimed = threading.Event()
    release = threading.Event()

    def first() -> None:
        with (
            database.connect() as conn,
            conn.transaction(),
            inbox.claim(conn, "billing", "m-4") as got,
        ):
            results["first"] = got
            first_claimed.set()
            release.wait(10)

    def second() -> None:
        first_claimed.wait(10)
        results["second"] = handle(database, inbox, "m-4")

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    first_claimed.wait(10)
    # While the first transaction is open, the second claim waits on its row lock.
    blocked = poll_lock_wait(database)
    release.set()
    for t in threads:
        t.join(10)

    assert blocked
    assert (results["first"], results["second"]) == (True, False)
    assert (
        effects(database) == 0
    )  # the first "handler" wrote nothing; the second skipped


def test_autocommit_connection_outside_a_transaction_is_refused(
    database: Database, inbox: Inbox
) -> None:
    with (
        database.connect(autocommit=True) as conn,
        pytest.raises(ValueError, match="transaction"),
    ):
        inbox.record(conn, "billing", "m-5")


def test_purge_deletes_old_rows_in_bounded_batches(
    database: Database, inbox: Inbox
) -> None:
    schema = sql.Identifier(database.schema)
    with database.connect(autocommit=True) as conn:
        conn.execute(
            sql.SQL(
                "INSERT INTO {}.reliable_inbox (consumer, message_id, processed_at)"
                " SELECT 'c', 'old-' || i, now() - interval '8 days' FROM generate_series(1, 25) i"
            ).format(schema)
        )
        conn.execute(
            sql.SQL(
                "INSERT INTO {}.reliable_inbox (consumer, message_id) SELECT 'c', 'new-' || i"
                " FROM generate_series(1, 5) i"
            ).format(schema)
        )
        would = inbox.count_older(conn, older_than_seconds=7 * 86400)
        one_batch = inbox.purge(
            conn, older_than_seconds=7 * 86400, batch_size=10, max_batches=1
        )
        rest = inbox.purge(conn, older_than_seconds=7 * 86400, batch_size=10)
        left = inbox.row_count(conn)

    assert (would, one_batch, rest, left) == (25, 10, 15, 5)
