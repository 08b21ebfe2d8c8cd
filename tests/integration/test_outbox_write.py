from __future__ import annotations

import json

import psycopg
import pytest
from psycopg import sql

from reliable import Reliable, errors
from tests.conftest import Database


def _rows(database: Database) -> list[tuple]:
    with database.connect() as conn:
        return conn.execute(
            sql.SQL(
                "SELECT message_id, exchange, routing_key, body, properties, ordering_key "
                "FROM {}.reliable_outbox ORDER BY id"
            ).format(sql.Identifier(database.schema))
        ).fetchall()


def test_publish_writes_a_row_only_when_the_transaction_commits(
    database: Database,
) -> None:
    rel = Reliable(database_url=database.url, db_schema=database.schema)
    with database.connect() as conn:
        with conn.transaction():
            committed = rel.outbox.publish(
                conn,
                exchange="shop.events",
                routing_key="order.created",
                body={"id": 42},
            )
        try:
            with conn.transaction():
                rel.outbox.publish(
                    conn, exchange="shop.events", routing_key="x", body={"id": 43}
                )
                raise RuntimeError("business logic failed")
        except RuntimeError:
            pass

    rows = _rows(database)

    assert [r[0] for r in rows] == [committed]
    assert json.loads(rows[0][3]) == {"id": 42}
    assert rows[0][4]["content_type"] == "application/json"


def test_publish_never_commits_the_callers_transaction(database: Database) -> None:
    rel = Reliable(database_url=database.url, db_schema=database.schema)
    with database.connect() as conn:
        rel.outbox.publish(conn, exchange="e", routing_key="k", body=b"\x00\xff")
        conn.rollback()

    assert _rows(database) == []


def test_unserializable_body_fails_inside_the_callers_transaction(
    database: Database,
) -> None:
    rel = Reliable(database_url=database.url, db_schema=database.schema)
    with database.connect() as conn, pytest.raises(TypeError):
        rel.outbox.publish(conn, exchange="e", routing_key="k", body={"when": object()})


def test_bytes_body_keeps_its_content_type_and_headers(database: Database) -> None:
    rel = Reliable(database_url=database.url, db_schema=database.schema)
    with database.connect() as conn, conn.transaction():
        rel.outbox.publish(
            conn,
            exchange="e",
            routing_key="k",
            body=b"\x00\xff",
            content_type="application/x-thing",
            headers={"tenant": "acme"},
            ordering_key="order-1",
            message_id="m-1",
        )

    (row,) = _rows(database)

    assert row == (
        "m-1",
        "e",
        "k",
        b"\x00\xff",
        {
            "content_type": "application/x-thing",
            "delivery_mode": 2,
            "headers": {"tenant": "acme"},
        },
        "order-1",
    )


def test_publish_without_migrations_says_to_migrate(database_url: str) -> None:
    rel = Reliable(database_url=database_url, db_schema="reliable_not_migrated")
    with (
        psycopg.connect(database_url) as conn,
        pytest.raises(errors.SchemaNotInstalled),
    ):
        rel.outbox.publish(conn, exchange="e", routing_key="k", body={})
