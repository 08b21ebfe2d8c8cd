"""
Outbox table operations used by the relay and the admin commands.

Every function takes a connection the caller owns and runs named SQL from
``reliable/sql/queries/outbox.sql``. The relay uses an autocommit connection,
so each call is one short transaction: claims commit before any broker I/O.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from reliable import amqp, db


@dataclass(frozen=True, slots=True)
class ClaimedRow:
    """An outbox row this relay holds until it marks, fails or releases it."""

    id: int
    message_id: str
    exchange: str
    routing_key: str
    body: bytes
    properties: dict[str, Any]
    ordering_key: str | None
    attempts: int
    created_at: datetime

    def to_message(self) -> amqp.OutgoingMessage:
        props = dict(self.properties)
        return amqp.OutgoingMessage(
            exchange=self.exchange,
            routing_key=self.routing_key,
            body=self.body,
            properties=amqp.Properties(
                content_type=props.get("content_type"),
                content_encoding=props.get("content_encoding"),
                headers=props.get("headers"),
                delivery_mode=props.get("delivery_mode", 2),
                priority=props.get("priority"),
                correlation_id=props.get("correlation_id"),
                reply_to=props.get("reply_to"),
                expiration=props.get("expiration"),
                message_id=self.message_id,
                timestamp=props.get("timestamp"),
                type=props.get("type"),
                app_id=props.get("app_id"),
            ),
        )


@dataclass(frozen=True, slots=True)
class Failure:
    """A failed attempt to record: the error text, the delay, and whether the row is now dead."""

    id: int
    error: str
    delay_seconds: float
    dead: bool


def _row(r: db.Row) -> ClaimedRow:
    return ClaimedRow(
        id=int(r["id"]),
        message_id=r["message_id"],
        exchange=r["exchange"],
        routing_key=r["routing_key"],
        body=bytes(r["body"]),
        properties=dict(r["properties"] or {}),
        ordering_key=r["ordering_key"],
        attempts=int(r["attempts"]),
        created_at=r["created_at"],
    )


def claim(
    conn: db.Connection,
    *,
    schema: str,
    token: uuid.UUID,
    limit: int,
    lease_seconds: float,
) -> list[ClaimedRow]:
    """Claim up to *limit* due unkeyed rows and up to *limit* due keyed-queue heads."""
    params = {"token": token, "limit": limit, "lease_seconds": lease_seconds}
    rows = [_row(r) for r in db.query(conn, "claim_batch", params, schema=schema)]
    rows.sort(key=lambda r: r.id)
    return rows


def mark_published(
    conn: db.Connection, ids: Sequence[int], *, schema: str, keep: bool
) -> int:
    """Delete (or, with *keep*, stamp ``published_at`` on) confirmed rows in one statement."""
    if not ids:
        return 0
    name = "keep_published" if keep else "delete_published"
    return db.execute(conn, name, {"ids": list(ids)}, schema=schema)


def record_failures(
    conn: db.Connection,
    failures: Sequence[Failure],
    *,
    schema: str,
    token: uuid.UUID,
) -> int:
    """Count one more attempt on each failed row, with its error and next due time."""
    if not failures:
        return 0
    return db.execute(
        conn,
        "record_failures",
        {
            "ids": [f.id for f in failures],
            "errors": [f.error[:1000] for f in failures],
            "delays": [f.delay_seconds for f in failures],
            "dead": [f.dead for f in failures],
            "token": token,
        },
        schema=schema,
    )


def release(
    conn: db.Connection,
    ids: Sequence[int],
    *,
    schema: str,
    token: uuid.UUID,
    delay_seconds: float,
) -> int:
    """Hand rows back without counting an attempt (fate unknown, or never sent)."""
    if not ids:
        return 0
    return db.execute(
        conn,
        "release_claims",
        {"ids": list(ids), "token": token, "delay_seconds": delay_seconds},
        schema=schema,
    )


def next_due_seconds(conn: db.Connection, *, schema: str) -> float | None:
    """Seconds until the earliest pending row is due; ``None`` if nothing is pending."""
    rows = db.query(conn, "next_due", schema=schema)
    value = rows[0]["seconds"] if rows else None
    return None if value is None else float(value)


def summary(conn: db.Connection, *, schema: str) -> dict[str, Any]:
    """Backlog, due, in-flight, retrying, dead and kept counts plus the oldest late row's age."""
    row = db.query(conn, "outbox_summary", schema=schema)[0]
    return {k: (float(v) if k.endswith("_seconds") else int(v)) for k, v in row.items()}


def by_destination(
    conn: db.Connection, *, schema: str, limit: int = 50
) -> list[dict[str, Any]]:
    return db.query(conn, "outbox_by_destination", {"limit": limit}, schema=schema)


def list_rows(
    conn: db.Connection, *, schema: str, dead: bool, limit: int
) -> list[dict[str, Any]]:
    name = "list_dead" if dead else "list_pending"
    return db.query(conn, name, {"limit": limit}, schema=schema)


def retry(
    conn: db.Connection, ids: Sequence[str], *, schema: str
) -> list[dict[str, Any]]:
    """Make the given rows (row ids or message ids) due now with a fresh attempt budget."""
    return db.query(conn, "retry_rows", {"ids": [str(i) for i in ids]}, schema=schema)


def retry_all_dead(conn: db.Connection, *, schema: str) -> list[dict[str, Any]]:
    return db.query(conn, "retry_all_dead", schema=schema)


def purge(
    conn: db.Connection,
    *,
    schema: str,
    what: str,
    older_than_seconds: float,
    batch_size: int = 1000,
    max_batches: int | None = None,
) -> int:
    """
    Delete dead (``what="dead"``) or kept published (``"published"``) rows older than the cut-off.

    Deletes in batches of *batch_size*, each its own statement, so a big purge
    never holds many row locks or one long transaction. With an autocommit
    connection each batch commits on its own.
    """
    name = {"dead": "purge_dead", "published": "purge_published"}[what]
    total = 0
    batches = 0
    while max_batches is None or batches < max_batches:
        n = db.execute(
            conn,
            name,
            {"older_than_seconds": older_than_seconds, "limit": batch_size},
            schema=schema,
        )
        total += n
        batches += 1
        if n < batch_size:
            break
    return total
