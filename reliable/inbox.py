"""
The inbox: remember which messages a consumer has handled, in the handler's
own PostgreSQL transaction.

A row ``(consumer, message_id)`` is inserted before the handler runs, in the
same transaction as the handler's writes. If the transaction commits, every
later copy of the message finds the row and is skipped; if it rolls back, the
row disappears with the handler's writes and a redelivery runs the handler
again. A concurrent copy blocks on the uncommitted row until the first
transaction ends. `reliable.tasks` builds effectively-once Celery tasks on
this; plain pika/kombu consumers use `Inbox.claim` directly.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from reliable import db
from reliable.metrics import Metrics

logger = logging.getLogger(__name__)

#: Results whose JSON text is larger than this are not stored (see `encode_result`).
DEFAULT_RESULT_MAX_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class InboxRow:
    """One handled message."""

    consumer: str
    message_id: str
    processed_at: datetime
    result: Any


def encode_result(value: Any, *, max_bytes: int = DEFAULT_RESULT_MAX_BYTES) -> Any:
    """
    Return *value* if it can be stored as the inbox result, else ``None``.

    Results are stored as JSON so a duplicate can return what the first run
    returned. A value that is not JSON-serializable, or whose JSON text is
    larger than *max_bytes*, is not stored: the handler's work is already
    done and must still commit, so this logs a warning instead of failing.
    """
    if value is None:
        return None
    try:
        text = json.dumps(value, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        logger.warning(
            "task result of type %s is not JSON-serializable (%s); stored as null",
            type(value).__name__,
            exc,
            extra={"action": "inbox_result_not_stored", "reason": "not_json"},
        )
        return None
    size = len(text.encode("utf-8"))
    if size > max_bytes:
        logger.warning(
            "task result of %d bytes exceeds the %d-byte limit; stored as null",
            size,
            max_bytes,
            extra={"action": "inbox_result_not_stored", "reason": "too_large"},
        )
        return None
    return json.loads(text)


class Inbox:
    """
    Deduplicate messages per consumer in the caller's transaction.

    Args:
        schema: PostgreSQL schema holding ``reliable_inbox``.
        metrics: Where processed/duplicate/failure counts go (optional).

    .. versionadded:: 0.1.0
    """

    def __init__(
        self, *, schema: str = "reliable", metrics: Metrics | None = None
    ) -> None:
        self.schema = schema
        self.metrics = metrics

    def __repr__(self) -> str:
        return f"Inbox(schema={self.schema!r})"

    @contextlib.contextmanager
    def claim(
        self, conn: db.Connection, consumer: str, message_id: str
    ) -> Iterator[bool]:
        """
        Claim *message_id* for *consumer* inside the caller's transaction.

        ::

            def on_message(channel, method, properties, body):
                with psycopg.connect(dsn) as conn, conn.transaction():
                    with rel.inbox.claim(
                        conn, "billing", properties.message_id
                    ) as first:
                        if first:
                            conn.execute("insert into invoices ...")
                channel.basic_ack(method.delivery_tag)  # after the commit

        Yields ``True`` the first time, ``False`` for a duplicate (the body of
        the ``with`` decides what to skip). Nothing is committed here: the
        claim becomes permanent only when the caller's transaction commits,
        and a rollback forgets it, so a redelivery is handled again. Ack the
        message only after the commit. A concurrent copy of the message waits
        in `claim` until the first transaction ends.

        Raises:
            ValueError: *conn* is in autocommit mode outside ``conn.transaction()``
                (the claim would commit on its own, before the handler's work).
            reliable.errors.SchemaNotInstalled: The inbox table is missing.

        .. versionadded:: 0.1.0
        """
        first = self.record(conn, consumer, message_id)
        try:
            yield first
        except BaseException as exc:
            self._count("failure", consumer, type(exc).__name__)
            raise
        self._count("processed" if first else "duplicate", consumer)

    def record(self, conn: db.Connection, consumer: str, message_id: str) -> bool:
        """
        Insert the claim row; ``True`` if it is new, ``False`` for a duplicate.

        The low-level form of `claim` (no metrics), used by `reliable.tasks`.
        """
        if not consumer or not message_id:
            msg = f"consumer and message_id must not be empty, got {consumer!r} and {message_id!r}"
            raise ValueError(msg)
        if not db.in_transaction(conn):
            msg = (
                "the inbox claim needs the caller's transaction, but the connection is "
                "in autocommit mode; use 'with conn.transaction():' around the handler"
            )
            raise ValueError(msg)
        inserted = db.execute(
            conn,
            "inbox_claim",
            {"consumer": consumer, "message_id": str(message_id)},
            schema=self.schema,
        )
        return inserted == 1

    def store_result(
        self,
        conn: db.Connection,
        consumer: str,
        message_id: str,
        result: Any,
        *,
        max_bytes: int = DEFAULT_RESULT_MAX_BYTES,
    ) -> None:
        """Attach the handler's result (JSON, size-limited) to a claim made in this transaction."""
        stored = encode_result(result, max_bytes=max_bytes)
        if stored is None:
            return
        db.execute(
            conn,
            "inbox_set_result",
            {
                "consumer": consumer,
                "message_id": str(message_id),
                "result": db.jsonb(stored),
            },
            schema=self.schema,
        )

    def get(
        self, conn: db.Connection, consumer: str, message_id: str
    ) -> InboxRow | None:
        """The committed (or own-transaction) row for *message_id*, if any."""
        rows = db.query(
            conn,
            "inbox_get",
            {"consumer": consumer, "message_id": str(message_id)},
            schema=self.schema,
        )
        return InboxRow(**rows[0]) if rows else None

    def purge(
        self,
        conn: db.Connection,
        *,
        older_than_seconds: float,
        batch_size: int = 1000,
        max_batches: int | None = None,
    ) -> int:
        """
        Delete rows older than *older_than_seconds*, *batch_size* rows per statement.

        On an autocommit connection every batch commits on its own, so a large
        purge never holds long locks (this is what ``reliable inbox purge``
        does). On a connection inside a transaction all batches belong to the
        caller's transaction, which the caller commits.

        Keep rows longer than the longest time a copy of a message can still
        arrive (retries, delays, dead-letter replays): a copy arriving after
        its row was purged runs the handler again.

        Returns:
            The number of rows deleted.

        .. versionadded:: 0.1.0
        """
        if not math.isfinite(older_than_seconds) or older_than_seconds < 0:
            msg = f"older_than_seconds must be a non-negative number, got {older_than_seconds!r}"
            raise ValueError(msg)
        if batch_size < 1:
            msg = f"batch_size must be at least 1, got {batch_size!r}"
            raise ValueError(msg)
        total = 0
        batches = 0
        while max_batches is None or batches < max_batches:
            deleted = db.execute(
                conn,
                "inbox_purge_batch",
                {"older_than_seconds": older_than_seconds, "batch_size": batch_size},
                schema=self.schema,
            )
            total += deleted
            batches += 1
            if deleted < batch_size:
                break
        logger.info(
            "purged %d inbox rows older than %gs",
            total,
            older_than_seconds,
            extra={"action": "inbox_purged", "count": total},
        )
        return total

    def count_older(self, conn: db.Connection, *, older_than_seconds: float) -> int:
        """Rows a purge with the same cut-off would delete (for ``--dry-run``)."""
        rows = db.query(
            conn,
            "inbox_count_older",
            {"older_than_seconds": older_than_seconds},
            schema=self.schema,
        )
        return int(rows[0]["rows"])

    def status(self, conn: db.Connection) -> list[dict[str, Any]]:
        """Per consumer: row count, oldest and newest ``processed_at``."""
        return db.query(conn, "inbox_status", schema=self.schema)

    def row_count(self, conn: db.Connection) -> int:
        """Rows in the inbox; also sets the ``reliable_inbox_rows`` gauge."""
        rows = int(db.query(conn, "inbox_row_count", schema=self.schema)[0]["rows"])
        if self.metrics is not None:
            self.metrics.inbox_rows.set(rows)
        return rows

    def recent_failures(
        self, conn: db.Connection, *, limit: int = 100
    ) -> list[dict[str, Any]]:
        """The newest rows of ``reliable_task_failures``."""
        return db.query(
            conn, "task_failures_recent", {"limit": limit}, schema=self.schema
        )

    def record_failure(
        self,
        conn: db.Connection,
        *,
        consumer: str,
        task_name: str,
        task_id: str,
        queue: str | None,
        exception_type: str,
        exception_message: str,
        traceback: str | None,
        attempts: int,
    ) -> None:
        """Insert one final task failure (in the caller's transaction)."""
        db.execute(
            conn,
            "task_failure_insert",
            {
                "consumer": consumer,
                "task_name": task_name,
                "task_id": task_id,
                "queue": queue,
                "exception_type": exception_type,
                "exception_message": exception_message,
                "traceback": traceback,
                "attempts": attempts,
            },
            schema=self.schema,
        )

    def _count(self, what: str, consumer: str, exception: str = "") -> None:
        if self.metrics is None:
            return
        if what == "processed":
            self.metrics.inbox_processed.labels(consumer=consumer).inc()
        elif what == "duplicate":
            self.metrics.inbox_duplicates.labels(consumer=consumer).inc()
        else:
            self.metrics.inbox_failures.labels(
                consumer=consumer, exception=exception
            ).inc()
