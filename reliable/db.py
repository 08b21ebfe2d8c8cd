"""
The PostgreSQL boundary: the only module that imports psycopg.

Other modules run named SQL (from ``reliable/sql``) through `query` and
`execute`, on a connection the caller owns; nothing here commits a caller's
transaction. psycopg errors become `reliable.errors.DatabaseError`.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
from collections.abc import Iterator, Mapping
from typing import Any, LiteralString, TypeAlias, TypeGuard

import psycopg
import psycopg.errors
import psycopg.pq
import psycopg.rows
import psycopg.types.json
from psycopg import sql as pgsql

from reliable import errors
from reliable import sql as queries
from reliable.redact import redact_text, redact_url

#: A psycopg 3 connection, as taken by every API that writes in the caller's transaction.
Connection: TypeAlias = "psycopg.Connection[Any]"
Row: TypeAlias = dict[str, Any]


@contextlib.contextmanager
def translate_errors() -> Iterator[None]:
    """Re-raise psycopg errors as `reliable.errors.DatabaseError` subclasses."""
    try:
        yield
    except psycopg.errors.UndefinedTable as exc:
        msg = f"reliable tables are missing ({_first_line(exc)}); run 'reliable db migrate'"
        raise errors.SchemaNotInstalled(msg, found=None, required=0) from exc
    except psycopg.errors.InvalidSchemaName as exc:
        msg = f"reliable schema is missing ({_first_line(exc)}); run 'reliable db migrate'"
        raise errors.SchemaNotInstalled(msg, found=None, required=0) from exc
    except psycopg.OperationalError as exc:
        msg = f"cannot use PostgreSQL ({_first_line(exc)}); check that it runs and the URL is right"
        raise errors.DatabaseError(msg) from exc
    except psycopg.Error as exc:
        raise errors.DatabaseError(_first_line(exc)) from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return redact_text(text[0]) if text else type(exc).__name__


def is_connection(obj: object) -> TypeGuard[Connection]:
    """Whether *obj* is a psycopg 3 connection (adapters use it to tell drivers apart)."""
    return isinstance(obj, psycopg.Connection)


def connect(
    url: str, *, autocommit: bool = False, connect_timeout_seconds: int = 10
) -> Connection:
    """
    Open a connection to *url* (empty: libpq's ``PG*`` variables).

    Raises:
        reliable.errors.DatabaseError: PostgreSQL cannot be reached.
    """
    try:
        return psycopg.connect(
            url, autocommit=autocommit, connect_timeout=connect_timeout_seconds
        )
    except psycopg.Error as exc:
        where = redact_url(url) if url else "the PG* environment"
        msg = f"cannot connect to PostgreSQL at {where} ({_first_line(exc)}); check that it runs and the URL is right"
        raise errors.DatabaseError(msg) from None


@functools.lru_cache(maxsize=512)
def statement(name: str, schema: str) -> pgsql.Composed:
    """The named query *name* with ``{schema}`` bound to the identifier *schema*."""
    return pgsql.SQL(queries.get(name)).format(schema=pgsql.Identifier(schema))


def query(
    conn: Connection, name: str, params: Mapping[str, Any] | None = None, *, schema: str
) -> list[Row]:
    """Run the named query and return its rows as dicts."""
    with translate_errors(), conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        cur.execute(statement(name, schema), params)
        return cur.fetchall() if cur.description else []


def execute(
    conn: Connection, name: str, params: Mapping[str, Any] | None = None, *, schema: str
) -> int:
    """Run the named statement and return the number of rows it touched."""
    with translate_errors(), conn.cursor() as cur:
        cur.execute(statement(name, schema), params)
        return cur.rowcount


def execute_script(conn: Connection, text: LiteralString, *, schema: str) -> None:
    """Run a multi-statement script (migrations) with ``{schema}`` bound."""
    with translate_errors():
        conn.execute(pgsql.SQL(text).format(schema=pgsql.Identifier(schema)))


def jsonb(value: Any) -> psycopg.types.json.Jsonb:
    """Wrap *value* for a ``jsonb`` parameter."""
    return psycopg.types.json.Jsonb(value)


@contextlib.contextmanager
def transaction(conn: Connection) -> Iterator[Connection]:
    """A transaction (or savepoint) on *conn*, for the toolkit's own connections."""
    with translate_errors(), conn.transaction():
        yield conn


class Listener:
    """
    A dedicated autocommit connection that LISTENs on one channel.

    Used by the relay to wake up as soon as a writing transaction commits
    (NOTIFY is delivered at commit, never for a rolled-back transaction).

    Raises:
        reliable.errors.DatabaseError: PostgreSQL cannot be reached.
    """

    def __init__(self, url: str, channel: str) -> None:
        self._conn = connect(url, autocommit=True)
        with translate_errors():
            self._conn.execute(pgsql.SQL("LISTEN {}").format(pgsql.Identifier(channel)))

    def wait(self, timeout_seconds: float) -> list[str]:
        """
        Return the payloads of notifications received within *timeout_seconds*.

        Returns as soon as one arrives (then also drains any already queued);
        an empty list means the time ran out.
        """
        payloads: list[str] = []
        with translate_errors():
            for notify in self._conn.notifies(
                timeout=max(timeout_seconds, 0.0), stop_after=1
            ):
                payloads.append(notify.payload)
            if payloads:
                payloads.extend(n.payload for n in self._conn.notifies(timeout=0.0))
        return payloads

    @property
    def closed(self) -> bool:
        return bool(self._conn.closed)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._conn.close()


# -- connections for task workers (added for reliable.tasks) ----------------------


def in_transaction(conn: Connection) -> bool:
    """
    Whether statements on *conn* run inside a transaction the caller controls.

    True for a non-autocommit connection (psycopg opens a transaction on the
    first statement) and for an autocommit connection inside
    ``conn.transaction()``; False when every statement would commit alone.
    """
    if not conn.autocommit:
        return True
    return conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE


def is_usable(conn: Connection) -> bool:
    """False when *conn* is closed or psycopg marked it broken (server gone, killed backend)."""
    return not conn.closed and not conn.broken


class ProcessLocalConnection:
    """
    One connection per process and thread, opened on first use.

    Celery's prefork pool forks children after the parent may have touched
    this object; a connection must never cross a fork (two processes on one
    socket corrupt the protocol), so a pid change discards the inherited
    connection without closing it (closing would send a Terminate message on
    the parent's socket) and opens a fresh one. A broken connection is
    replaced on the next `get`.
    """

    def __init__(self, url: str, *, connect_timeout_seconds: int = 10) -> None:
        self._url = url
        self._timeout = connect_timeout_seconds
        self._local = threading.local()

    def __repr__(self) -> str:
        return f"ProcessLocalConnection({redact_url(self._url) if self._url else ''!r})"

    def get(self) -> Connection:
        """The calling thread's connection (non-autocommit), reopened if needed."""
        pid = os.getpid()
        conn: Connection | None = getattr(self._local, "conn", None)
        if conn is not None and (
            getattr(self._local, "pid", None) != pid or not is_usable(conn)
        ):
            if getattr(self._local, "pid", None) == pid:
                with contextlib.suppress(Exception):
                    conn.close()
            conn = None
        if conn is None:
            conn = connect(
                self._url, autocommit=False, connect_timeout_seconds=self._timeout
            )
            self._local.conn = conn
            self._local.pid = pid
        return conn

    def discard(self) -> None:
        """Close and forget the calling thread's connection (after an error left it unusable)."""
        conn: Connection | None = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None and getattr(self._local, "pid", None) == os.getpid():
            with contextlib.suppress(Exception):
                conn.close()


def ensure_idle(conn: Connection) -> None:
    """Roll back whatever transaction a previous user left open on *conn*."""
    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        conn.rollback()
