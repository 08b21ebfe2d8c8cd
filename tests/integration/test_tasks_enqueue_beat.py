"""
`Outbox.enqueue` against the real broker and a real worker, and the beat
scheduler with two real beat processes.

The relay is not part of this branch, so these tests publish the stored
rows themselves with `reliable.amqp.ConfirmingPublisher`, as the relay does.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import chain

from reliable import amqp
from reliable.outbox import Outbox
from tests import celery_app as tasks
from tests.conftest import Broker, Database
from tests.integration.celery_support import Env, poll, prepare

pytestmark = pytest.mark.slow


@pytest.fixture(name="env")
def _env(broker: Broker, database: Database, tmp_path: Path) -> Iterator[Env]:
    yield from prepare(broker, database, tmp_path)


def publish_due_rows(env: Env) -> list[str]:
    """Publish every due outbox row with confirms (what the relay does) and mark it."""
    rows = env.rows(
        "SELECT id, message_id, exchange, routing_key, body, properties FROM {s}.reliable_outbox"
        " WHERE published_at IS NULL AND available_at <= now() ORDER BY id"
    )
    messages = [
        amqp.OutgoingMessage(
            exchange=exchange,
            routing_key=routing_key,
            body=bytes(body),
            properties=amqp.Properties(**properties, message_id=message_id),
        )
        for _id, message_id, exchange, routing_key, body, properties in rows
    ]
    publisher = amqp.ConfirmingPublisher(env.broker.amqp_url)
    try:
        result = publisher.publish_batch(messages, timeout_seconds=10)
    finally:
        publisher.close()
    assert result.all_confirmed, result.outcomes
    ids = [row[0] for row in rows]
    env.rows(
        "UPDATE {s}.reliable_outbox SET published_at = now() WHERE id = ANY(%s) RETURNING id",
        ids,
    )
    return [row[1] for row in rows]


def enqueue(env: Env, signature: Any, *, rollback: bool = False, **kwargs: Any) -> str:
    outbox = Outbox(schema=env.database.schema)
    with env.database.connect() as conn:
        task_id = outbox.enqueue(conn, signature, **kwargs)
        if rollback:
            conn.rollback()
        else:
            conn.commit()
    return task_id


def test_enqueued_message_is_the_message_apply_async_publishes(env: Env) -> None:
    signature = tasks.record.s("same").set(priority=3)
    env.send(tasks.record, "same", priority=3, task_id="fixed-id")
    (direct,) = env.get_all("tasks")

    enqueue(env, signature, task_id="fixed-id")
    publish_due_rows(env)
    (stored,) = env.get_all("tasks")

    (d_method, d_props, d_body), (s_method, s_props, s_body) = direct, stored
    assert s_body == d_body
    assert s_props.headers == d_props.headers
    assert (s_method.exchange, s_method.routing_key) == (
        d_method.exchange,
        d_method.routing_key,
    )
    for name in (
        "content_type",
        "content_encoding",
        "correlation_id",
        "reply_to",
        "priority",
        "delivery_mode",
    ):
        assert getattr(s_props, name) == getattr(d_props, name), name
    assert (d_props.message_id, s_props.message_id) == (None, "fixed-id")


def test_enqueued_tasks_run_on_a_real_worker_only_when_committed(env: Env) -> None:
    worker = env.worker("w1", concurrency=2)

    enqueue(env, tasks.record.s("rolled-back"), rollback=True)
    task_id = enqueue(env, tasks.record.s("enqueued"))
    enqueue(env, chain(tasks.record.si("chain-1"), tasks.record.si("chain-2")))
    later = enqueue(env, tasks.record.s("later").set(countdown=600))
    published = publish_due_rows(env)
    poll(
        lambda: env.effects("enqueued") == 1 and env.effects("chain-2") == 1,
        what="the enqueued task and the whole chain",
    )
    poll(lambda: env.queue_state("tasks")[0] == 0, what="queue drained")
    env.stop(worker)

    assert task_id in published
    assert later not in published  # held by its row delay (countdown 600 s)
    assert env.effects("rolled-back") == 0
    assert [env.effects(label) for label in ("enqueued", "chain-1", "chain-2")] == [
        1,
        1,
        1,
    ]
    assert env.rows("SELECT task_id FROM {s}.effects WHERE label = 'enqueued'") == [
        (task_id,)
    ]
    delay = env.scalar(
        "SELECT extract(epoch FROM available_at - created_at) FROM {s}.reliable_outbox WHERE message_id = %s",
        later,
    )
    assert 590 < float(delay) <= 600


def test_two_beats_cause_one_execution_per_schedule_slot(
    env: Env, tmp_path: Path
) -> None:
    worker = env.worker("w1", pool="solo")
    beats = [
        env.start(
            "beat",
            "--scheduler=reliable.tasks:ReliableScheduler",
            f"--schedule={tmp_path / f'beat{i}-schedule'}",
            "--max-interval=1",
            "--loglevel=INFO",
            name=f"beat{i}",
            RELIABLE_TEST_BEAT_SECONDS="2",
        )
        for i in (1, 2)
    ]

    def slots() -> int:
        return int(
            env.scalar(
                "SELECT count(DISTINCT task_id) FROM {s}.deliveries WHERE label = ''"
            )
        )

    poll(
        lambda: slots() >= 3 and env.deliveries("") > slots(),
        timeout=60,
        what="three slots, some sent twice",
    )
    for beat in beats:
        env.stop(beat)
    poll(lambda: env.queue_state("tasks")[0] == 0, what="queue drained")
    env.stop(worker)
    per_id = env.rows(
        "SELECT task_id, count(*) FROM {s}.effects WHERE label = 'tick' GROUP BY task_id"
    )
    delivered = env.deliveries("")

    assert delivered > len(per_id)  # both beats really sent some slots
    assert {count for _id, count in per_id} == {1}
    assert len(per_id) == slots()
