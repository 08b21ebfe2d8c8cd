"""A Celery task that fails on a real worker lands in the DLQ, is shown as a task, and replays."""

from __future__ import annotations

import threading

import psycopg
import pytest
from celery import Celery
from celery.contrib.testing.worker import start_worker
from kombu import Exchange, Queue

from reliable.dlq import DeadLetters
from reliable.dlq_filters import Filter
from tests.integration.dlq_support import DLQ, connect, depth, wait_depth, wait_for

TASKS = "tasks"


@pytest.fixture(name="app")
def _app(broker):
    conn = connect(broker.amqp_url)
    ch = conn.channel()
    ch.exchange_declare("dlx", "fanout", durable=True)
    ch.queue_declare(DLQ, durable=True)
    ch.queue_bind(DLQ, "dlx")
    conn.close()
    app = Celery("dlqtest", broker=broker.amqp_url, set_as_current=False)
    app.conf.update(
        task_acks_late=True,
        # A failure rejects the message (no requeue), so the broker dead-letters it.
        task_acks_on_failure_or_timeout=False,
        task_queues=[
            Queue(
                TASKS,
                Exchange(TASKS, type="direct"),
                routing_key=TASKS,
                queue_arguments={"x-dead-letter-exchange": "dlx"},
            ),
        ],
        task_default_queue=TASKS,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=False,
    )
    return app


def test_failed_celery_task_is_dead_lettered_shown_grouped_and_replayed(
    app, broker, database
) -> None:
    done: list[int] = []
    healthy = threading.Event()

    @app.task(name="shop.charge")
    def charge(order_id: int) -> None:
        if not healthy.is_set():
            raise ConnectionError("payment provider down")
        done.append(order_id)

    conn = connect(broker.amqp_url)
    ch = conn.channel()
    with start_worker(app, pool="solo", perform_ping_check=False, shutdown_timeout=30):
        ids = [charge.apply_async((n,)).id for n in (1, 2)]
        other = app.send_task("shop.refund", (3,))  # unknown task: rejected too
        wait_depth(ch, DLQ, 3)
        # What the effectively-once helper records for a final failure.
        with psycopg.connect(database.url, autocommit=True) as db:
            for task_id in ids:
                db.execute(
                    psycopg.sql.SQL(
                        "INSERT INTO {}.reliable_task_failures (consumer, task_name, task_id, queue,"
                        " exception_type, exception_message, attempts) VALUES (%s, %s, %s, %s, %s, %s, 1)"
                    ).format(psycopg.sql.Identifier(database.schema)),
                    (
                        "c",
                        "shop.charge",
                        task_id,
                        TASKS,
                        "ConnectionError",
                        "payment provider down",
                    ),
                )
        dl = DeadLetters(
            broker.amqp_url, database_url=database.url, db_schema=database.schema
        )

        letters, _ = dl.peek(DLQ)
        by_exception, _ = dl.peek(DLQ, Filter(exceptions=("ConnectionError",)))
        healthy.set()
        report = dl.replay(DLQ, Filter(tasks=("shop.charge",)))
        wait_for(lambda: sorted(done) == [1, 2], what="the replayed tasks to run")

    shown = {x.task_id: x for x in letters}
    assert set(shown) == {*ids, other.id}
    assert shown[ids[0]].task_name == "shop.charge"
    assert shown[ids[0]].origin.queue == TASKS
    assert shown[ids[0]].origin.reason == "rejected"
    assert shown[ids[0]].message.properties.correlation_id == ids[0]
    assert shown[ids[0]].exception_type == "ConnectionError"
    assert shown[other.id].exception_type is None
    assert sorted(x.task_id for x in by_exception) == sorted(ids)
    assert report.counts["replayed"] == 2
    assert depth(ch, DLQ) == 1
    conn.close()
