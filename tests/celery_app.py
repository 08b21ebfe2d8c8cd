"""
The Celery app the integration tests run real workers of.

Started as ``celery -A tests.celery_app worker ...`` in a subprocess; it reads
its broker URL (a per-test vhost) and database schema from the environment
that the test passes to the subprocess:

* ``RELIABLE_TEST_CELERY_BROKER``: AMQP URL of the test's vhost;
* ``RELIABLE_TEST_CELERY_DATABASE_URL`` and ``RELIABLE_TEST_CELERY_SCHEMA``;
* ``RELIABLE_TEST_KILL_AFTER_COMMIT``: a label; the worker SIGKILLs its whole
  process group right after that task's transaction committed, before the ack;
* ``RELIABLE_TEST_BEAT_SECONDS``: interval of the ``tick`` beat entry.

Side effects go to ``effects`` (written in the task's transaction) and every
delivery is logged in ``deliveries`` from the ``task_prerun`` signal on an
autocommit connection, so tests can tell executions from deliveries.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import psycopg
import psycopg.types.json
from celery import Celery
from celery.signals import task_postrun, task_prerun, task_success
from kombu import Exchange, Queue

from reliable import Reliable

BROKER = os.environ.get("RELIABLE_TEST_CELERY_BROKER", "memory://")
DATABASE_URL = os.environ.get("RELIABLE_TEST_CELERY_DATABASE_URL", "")
SCHEMA = os.environ.get("RELIABLE_TEST_CELERY_SCHEMA", "reliable")
QUORUM_DLX = {"x-queue-type": "quorum", "x-dead-letter-exchange": "dlx"}

app = Celery("reliable_test_app", broker=BROKER)
app.conf.update(
    task_queues=[
        Queue(
            "tasks",
            Exchange("tasks", type="direct"),
            routing_key="tasks",
            queue_arguments=QUORUM_DLX,
        ),
        Queue(
            "limited",
            Exchange("limited", type="direct"),
            routing_key="limited",
            queue_arguments={**QUORUM_DLX, "x-delivery-limit": 1},
        ),
    ],
    task_default_queue="tasks",
    task_default_exchange="tasks",
    task_default_routing_key="tasks",
    task_routes={"tests.celery_app.timeout": {"queue": "limited"}},
    worker_prefetch_multiplier=1,
    # Celery declares 28 celery_delayed_* queues per vhost when it sees quorum
    # queues; classic ones are far cheaper to create and delete per test.
    broker_native_delayed_delivery_queue_type="classic",
    broker_transport_options={"confirm_publish": True},
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    beat_schedule={
        "tick": {
            "task": "tests.celery_app.tick",
            "schedule": float(os.environ.get("RELIABLE_TEST_BEAT_SECONDS", "2")),
        }
    },
)
rel = Reliable(celery_app=app, database_url=DATABASE_URL, db_schema=SCHEMA)

_side: dict[int, psycopg.Connection[Any]] = {}


def side_conn() -> psycopg.Connection[Any]:
    """An autocommit connection of this process, for records that must survive rollbacks."""
    pid = os.getpid()
    if pid not in _side:
        _side[pid] = psycopg.connect(DATABASE_URL, autocommit=True)
    return _side[pid]


def table(name: str) -> psycopg.sql.Composed:
    return psycopg.sql.SQL("{}.{}").format(
        psycopg.sql.Identifier(SCHEMA), psycopg.sql.Identifier(name)
    )


def effect(conn: psycopg.Connection[Any], label: str, task_id: str) -> None:
    conn.execute(
        psycopg.sql.SQL("INSERT INTO {} (label, task_id) VALUES (%s, %s)").format(
            table("effects")
        ),
        (label, task_id),
    )


def _label(args: Any, kwargs: Any) -> str:
    if kwargs and "label" in kwargs:
        return str(kwargs["label"])
    return str(args[0]) if args else ""


@task_prerun.connect
def _log_delivery(task_id: str, task: Any, args: Any, kwargs: Any, **_: Any) -> None:
    if DATABASE_URL and task.name.startswith("tests.celery_app."):
        side_conn().execute(
            psycopg.sql.SQL(
                "INSERT INTO {} (task_id, label, pid) VALUES (%s, %s, %s)"
            ).format(table("deliveries")),
            (task_id, _label(args, kwargs), os.getpid()),
        )


@task_postrun.connect
def _kill_after_commit(task: Any, args: Any, kwargs: Any, state: str, **_: Any) -> None:
    # task_postrun runs after the body's transaction committed and before the
    # worker acks the message (acks_late): the exact window under test.
    target = os.environ.get("RELIABLE_TEST_KILL_AFTER_COMMIT")
    if target and state == "SUCCESS" and _label(args, kwargs) == target:
        os.killpg(os.getpgid(0), signal.SIGKILL)


@task_success.connect
def _log_result(sender: Any, result: Any, **_: Any) -> None:
    # What each delivery returned to Celery: duplicates must return the first run's result.
    if DATABASE_URL and sender.name.startswith("tests.celery_app."):
        side_conn().execute(
            psycopg.sql.SQL("INSERT INTO {} (task_id, result) VALUES (%s, %s)").format(
                table("results")
            ),
            (sender.request.id, psycopg.types.json.Jsonb(result)),
        )


class TransientError(Exception):
    """Raised by `flaky` until it has failed often enough."""


@rel.task(bind=True)
def record(
    self: Any, conn: psycopg.Connection[Any], label: str, sleep: float = 0.0
) -> dict[str, Any]:
    """One effect; *sleep* keeps the first delivery's transaction open (a running body)."""
    effect(conn, label, self.request.id)
    if sleep and not (self.request.delivery_info or {}).get("redelivered"):
        side_conn().execute(
            psycopg.sql.SQL("INSERT INTO {} (label, pid) VALUES (%s, %s)").format(
                table("started")
            ),
            (label, os.getpid()),
        )
        time.sleep(sleep)
    return {"label": label, "pid": os.getpid()}


@rel.task(bind=True)
def fail(self: Any, conn: psycopg.Connection[Any], label: str) -> None:
    """Writes and enqueues, then fails with a non-retryable error: both must roll back."""
    effect(conn, label, self.request.id)
    rel.outbox.enqueue(conn, record.s(f"{label}-follow-up"))
    msg = f"cannot process {label!r}"
    raise ValueError(msg)


def _attempt(label: str) -> int:
    row = (
        side_conn()
        .execute(
            psycopg.sql.SQL(
                "INSERT INTO {} (label) VALUES (%s) RETURNING (SELECT count(*) FROM {} WHERE label = %s)"
            ).format(table("attempts"), table("attempts")),
            (label, label),
        )
        .fetchone()
    )
    assert row is not None
    return int(row[0]) + 1


@rel.task(
    bind=True,
    autoretry_for=(TransientError,),
    retry_backoff=1,
    retry_backoff_max=2,
    retry_jitter=True,
    max_retries=5,
)
def flaky(self: Any, conn: psycopg.Connection[Any], label: str, failures: int) -> str:
    """Writes and enqueues, then fails *failures* times with a retryable error before succeeding."""
    effect(conn, label, self.request.id)
    rel.outbox.enqueue(conn, record.s(f"{label}-follow-up"))
    if _attempt(label) <= failures:
        raise TransientError(label)
    return "ok"


@rel.task(bind=True, autoretry_for=(TransientError,), retry_backoff=True, max_retries=1)
def always_transient(self: Any, conn: psycopg.Connection[Any], label: str) -> None:
    """Retryable failure on every attempt: dead-lettered once max_retries is used up."""
    effect(conn, label, self.request.id)
    _attempt(label)
    raise TransientError(label)


@rel.task(bind=True, max_retries=3)
def retry_once(self: Any, conn: psycopg.Connection[Any], label: str) -> str:
    """`self.retry` style: the first attempt writes, asks for a retry, and is rolled back."""
    effect(conn, label, self.request.id)
    if _attempt(label) == 1:
        raise self.retry(countdown=0.2)
    return "ok"


@rel.task(bind=True, dedupe_key=lambda event_id, payload: event_id)
def on_event(
    self: Any, conn: psycopg.Connection[Any], event_id: str, payload: dict[str, Any]
) -> None:
    """Deduplicated on the business key *event_id*, whatever the task id."""
    effect(conn, event_id, self.request.id)


@rel.task(bind=True, time_limit=1)
def timeout(self: Any, conn: psycopg.Connection[Any], label: str) -> None:
    """Writes and then outlives its hard time limit: the pool kills the child."""
    effect(conn, label, self.request.id)
    time.sleep(30)


@rel.task(bind=True)
def tick(self: Any, conn: psycopg.Connection[Any]) -> None:
    """The beat entry's task."""
    effect(conn, "tick", self.request.id)
