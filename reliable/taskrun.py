"""
The Celery-free half of effectively-once tasks: one execution in one
PostgreSQL transaction with its inbox claim.

`reliable.tasks` (the only celery/kombu importer) calls `execute` from the
task's ``run``; everything here is plain Python so it can be read and unit
tested without a worker.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from reliable import db
from reliable.inbox import DEFAULT_RESULT_MAX_BYTES, Inbox

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskSpec:
    """What the decorator knows about one effectively-once task."""

    #: Inbox consumer name (the task name unless set).
    consumer: str
    #: Business key function; ``None`` uses the Celery task id.
    dedupe_key: Callable[..., Any] | None = None
    #: Larger results are not stored (a duplicate then returns ``None``).
    result_max_bytes: int = DEFAULT_RESULT_MAX_BYTES

    def message_key(
        self, task_id: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> str:
        """
        The inbox key of one execution: the business key, else the task id.

        The task id survives redelivery, dead-letter replay and every Celery
        retry, so a committed execution makes all later copies duplicates,
        while a failed (rolled-back) attempt leaves no row and its retry runs.
        """
        if self.dedupe_key is None:
            if not task_id:
                msg = "the message has no task id; effectively-once tasks need Celery protocol 2 messages"
                raise ValueError(msg)
            return task_id
        value = self.dedupe_key(*args, **kwargs)
        if value is None or value == "":
            msg = f"dedupe_key returned {value!r} for the task's arguments; return a non-empty str or int"
            raise ValueError(msg)
        return str(value)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one execution did: ran the body, or skipped a duplicate."""

    duplicate: bool
    result: Any
    key: str


def execute(
    *,
    spec: TaskSpec,
    inbox: Inbox,
    connections: db.ProcessLocalConnection,
    task_id: str,
    body: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    leading: tuple[Any, ...] = (),
) -> Outcome:
    """
    Run *body* once per message key, in one transaction with the inbox claim.

    ``BEGIN; INSERT inbox ON CONFLICT DO NOTHING``; a duplicate ends the
    transaction and returns the stored result; otherwise the body runs with
    the connection as its first argument (after *leading*, the bound task),
    its result is stored, and the transaction commits. Any exception rolls
    everything back (claim, body writes, outbox rows) and propagates, so
    Celery can retry or reject the message.
    """
    key = spec.message_key(task_id, args, kwargs)
    conn = connections.get()
    db.ensure_idle(conn)
    try:
        # conn.transaction() also forbids conn.commit() inside the body, which
        # would split the claim from the work.
        with conn.transaction():
            first = inbox.record(conn, spec.consumer, key)
            if not first:
                row = inbox.get(conn, spec.consumer, key)
                stored = row.result if row is not None else None
            else:
                result = body(*leading, conn, *args, **kwargs)
                inbox.store_result(
                    conn, spec.consumer, key, result, max_bytes=spec.result_max_bytes
                )
    except BaseException:
        if not db.is_usable(conn):
            connections.discard()
        raise
    if not first:
        logger.info(
            "skipped duplicate of %s for %s",
            key,
            spec.consumer,
            extra={
                "action": "inbox_duplicate",
                "consumer": spec.consumer,
                "message_id": key,
            },
        )
        return Outcome(duplicate=True, result=stored, key=key)
    return Outcome(duplicate=False, result=result, key=key)
