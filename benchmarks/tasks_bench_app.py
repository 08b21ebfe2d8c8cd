"""
Celery app of the task benchmark: one INSERT per task, plain vs ``@rel.task``.

Configured from the environment by `benchmarks.tasks_bench` (broker vhost,
database schema); both tasks run in the same worker with the same settings.
"""

from __future__ import annotations

import os
from typing import Any

import psycopg
from celery import Celery
from kombu import Exchange, Queue

from reliable import Reliable

BROKER = os.environ.get("RELIABLE_BENCH_BROKER", "memory://")
DATABASE_URL = os.environ.get("RELIABLE_BENCH_DATABASE_URL", "")
SCHEMA = os.environ.get("RELIABLE_BENCH_SCHEMA", "reliable")

app = Celery("reliable_tasks_bench", broker=BROKER)
app.conf.update(
    task_queues=[
        Queue(
            "bench",
            Exchange("bench", type="direct"),
            routing_key="bench",
            queue_arguments={"x-queue-type": "quorum"},
        ),
    ],
    task_default_queue="bench",
    task_default_exchange="bench",
    task_default_routing_key="bench",
    worker_prefetch_multiplier=8,
    broker_native_delayed_delivery_queue_type="classic",
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)
rel = Reliable(celery_app=app, database_url=DATABASE_URL, db_schema=SCHEMA)
INSERT = psycopg.sql.SQL("INSERT INTO {}.bench (kind, n) VALUES (%s, %s)").format(
    psycopg.sql.Identifier(SCHEMA)
)
_conns: dict[int, psycopg.Connection[Any]] = {}


@app.task(acks_late=True, name="bench.plain")
def plain(n: int) -> None:
    """The baseline: an acks_late task doing the INSERT in its own transaction."""
    pid = os.getpid()
    if pid not in _conns:
        _conns[pid] = psycopg.connect(DATABASE_URL)
    conn = _conns[pid]
    with conn.transaction():
        conn.execute(INSERT, ("plain", n))


@rel.task(name="bench.reliable")
def reliable_insert(conn: psycopg.Connection[Any], n: int) -> None:
    """The same INSERT inside the inbox transaction."""
    conn.execute(INSERT, ("reliable", n))
