"""
The PostgreSQL side of the dead-letter tooling: the audit table of runs
(migration ``0003_dlq_audit``) and the failure records of effectively-once
tasks (``reliable_task_failures``, migration ``0002_inbox``).

Each function opens its own short connection and transaction: these are the
tool's own bookkeeping, not part of a caller's unit of work.
"""

from __future__ import annotations

import getpass
import socket
from collections.abc import Sequence
from typing import Any

from reliable import db
from reliable.dlq_replay import RunReport


def os_user() -> str:
    """Who ran the command (the OS user; ``unknown`` without a passwd entry)."""
    try:
        return getpass.getuser()
    except Exception:  # some containers run as a uid with no passwd entry
        return "unknown"


def failure_records(
    database_url: str, schema: str, task_ids: Sequence[str]
) -> dict[str, dict[str, Any]]:
    """
    The newest failure record per task id.

    Raises:
        reliable.errors.DatabaseError: Unreachable, or the table is missing.
    """
    conn = db.connect(database_url, autocommit=True)
    try:
        rows = db.query(
            conn, "dlq_task_failures", {"task_ids": list(task_ids)}, schema=schema
        )
    finally:
        conn.close()
    return {str(r["task_id"]): r for r in rows}


def record_run(database_url: str, schema: str, report: RunReport) -> int:
    """
    Write one row for *report* and return its id.

    Raises:
        reliable.errors.DatabaseError: Unreachable, or the table is missing.
    """
    conn = db.connect(database_url)
    try:
        with db.transaction(conn):
            rows = db.query(
                conn,
                "insert_dlq_run",
                {
                    "started_at": report.started_at,
                    "os_user": os_user(),
                    "hostname": socket.gethostname(),
                    "command": report.command,
                    "queue": report.queue,
                    "target": report.target or None,
                    "filters": db.jsonb(report.filters),
                    "counts": db.jsonb(report.counts),
                    "dry_run": report.dry_run,
                    "interrupted": report.interrupted,
                },
                schema=schema,
            )
    finally:
        conn.close()
    return int(rows[0]["id"])


def list_runs(
    database_url: str, schema: str, *, queue: str | None, limit: int
) -> list[dict[str, Any]]:
    """
    Audited runs, newest first.

    Raises:
        reliable.errors.DatabaseError: Unreachable, or the schema is missing.
    """
    conn = db.connect(database_url)
    try:
        rows = db.query(
            conn, "list_dlq_runs", {"queue": queue, "limit": limit}, schema=schema
        )
        conn.rollback()
    finally:
        conn.close()
    return rows
