"""
Effectively-once tasks under a real Celery worker (subprocesses), real
RabbitMQ (a vhost per test) and real PostgreSQL (a schema per test).

Effects are counted in PostgreSQL: ``effects`` rows are written in the
task's transaction, ``deliveries`` rows by ``task_prerun`` on an autocommit
connection (so they count every delivery, including skipped duplicates).
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import celery_app as tasks
from tests.conftest import Broker, Database
from tests.integration.celery_support import Env, poll, prepare

pytestmark = pytest.mark.slow


@pytest.fixture(name="env")
def _env(broker: Broker, database: Database, tmp_path: Path) -> Iterator[Env]:
    yield from prepare(broker, database, tmp_path)


def drained(env: Env, queue: str = "tasks") -> bool:
    ready, _consumers = env.queue_state(queue)
    return ready == 0


def test_same_task_id_sent_ten_times_has_one_effect(env: Env) -> None:
    worker = env.worker("w1", concurrency=2)

    for _ in range(10):
        env.send(tasks.record, "ten", task_id="the-same-id")
    poll(lambda: env.deliveries("ten") == 10, what="ten deliveries")
    poll(lambda: drained(env), what="queue drained")
    env.stop(worker)  # warm shutdown: every started delivery finishes first

    assert env.effects("ten") == 1
    # Every delivery returned the first run's result (same pid), duplicates included.
    returned = env.rows("SELECT result FROM {s}.results WHERE task_id = 'the-same-id'")
    assert len(returned) == 10
    assert len({json.dumps(r[0], sort_keys=True) for r in returned}) == 1
    stored = env.rows(
        "SELECT consumer, message_id, result FROM {s}.reliable_inbox WHERE message_id = %s",
        "the-same-id",
    )
    assert [(c, m, r["label"]) for c, m, r in stored] == [
        ("tests.celery_app.record", "the-same-id", "ten")
    ]


def test_business_key_skips_a_new_task_id_for_the_same_event(env: Env) -> None:
    worker = env.worker("w1", concurrency=1)

    env.send(tasks.on_event, "evt-1", {"n": 1})
    env.send(tasks.on_event, "evt-1", {"n": 1})
    env.send(tasks.on_event, "evt-2", {"n": 2})
    poll(
        lambda: env.deliveries("evt-1") == 2 and env.deliveries("evt-2") == 1,
        what="deliveries",
    )
    poll(lambda: drained(env), what="queue drained")
    env.stop(worker)

    assert (env.effects("evt-1"), env.effects("evt-2")) == (1, 1)


def test_two_workers_receiving_a_duplicate_at_once_run_it_once(env: Env) -> None:
    w1 = env.worker("w1", pool="solo", concurrency=1)
    w2 = env.worker("w2", pool="solo", concurrency=1)

    # The first copy holds its transaction open for 2 s; RabbitMQ hands the
    # second copy to the other (idle) worker, which blocks on the inbox row.
    env.send(tasks.record, "dup", 2.0, task_id="dup-id")
    env.send(tasks.record, "dup", 2.0, task_id="dup-id")
    poll(lambda: env.deliveries("dup") == 2, what="both copies delivered")
    poll(lambda: drained(env), what="queue drained")
    env.stop(w1)
    env.stop(w2)
    pids = env.rows("SELECT DISTINCT pid FROM {s}.deliveries WHERE label = 'dup'")

    assert len(pids) == 2
    assert env.effects("dup") == 1


def test_sigkill_of_the_worker_group_mid_body_leaves_exactly_one_effect_each(
    env: Env,
) -> None:
    labels = [f"k{i}" for i in range(6)]
    worker = env.worker("w1", concurrency=2)
    for label in labels:
        env.send(tasks.record, label, 1.5)
    poll(
        lambda: env.scalar("SELECT count(*) FROM {s}.started") >= 2,
        what="two bodies running",
    )

    env.kill_group(worker)
    restarted = env.worker("w2", concurrency=2)
    poll(
        lambda: all(env.effects(label) >= 1 for label in labels),
        timeout=60,
        what="every task's effect",
    )
    env.stop(restarted)

    assert [env.effects(label) for label in labels] == [1] * 6
    assert env.queue_state("tasks")[0] == 0
    assert env.scalar("SELECT count(*) FROM {s}.reliable_inbox") == 6


def test_sigkill_after_commit_before_ack_skips_the_redelivery(env: Env) -> None:
    worker = env.worker("w1", pool="solo", RELIABLE_TEST_KILL_AFTER_COMMIT="committed")

    env.send(tasks.record, "committed")
    poll(
        lambda: worker.poll() is not None, what="the worker to kill itself after commit"
    )
    assert env.effects("committed") == 1

    restarted = env.worker("w2", pool="solo")
    poll(lambda: env.deliveries("committed") == 2, what="the redelivery")
    poll(lambda: drained(env), what="queue drained")
    env.stop(restarted)

    assert env.effects("committed") == 1


def test_killed_pool_child_requeues_and_the_task_runs_once(env: Env) -> None:
    worker = env.worker("w1", concurrency=1)

    env.send(tasks.record, "lost", 30.0)
    pid = poll(
        lambda: env.rows("SELECT pid FROM {s}.started WHERE label = 'lost'"),
        what="the body to start",
    )[0][0]
    os.kill(pid, signal.SIGKILL)  # only the pool child: Celery sees WorkerLostError
    # reject_on_worker_lost requeues it; the redelivery does not sleep (see record).
    poll(lambda: env.effects("lost") == 1, what="the requeued delivery to commit")
    poll(lambda: drained(env), what="queue drained")
    env.stop(worker)

    assert env.deliveries("lost") == 2
    assert env.effects("lost") == 1
    assert env.queue_state("dlq")[0] == 0


def test_failing_task_is_dead_lettered_recorded_and_rolled_back(env: Env) -> None:
    env.worker("w1", concurrency=1)

    task_id = env.send(tasks.fail, "boom")
    poll(lambda: env.queue_state("dlq")[0] == 1, what="the message in the DLQ")
    failures = env.rows(
        "SELECT task_name, task_id, queue, exception_type, exception_message, attempts, traceback"
        " FROM {s}.reliable_task_failures"
    )
    dead = env.get_all("dlq")

    assert env.effects("boom") == 0
    assert env.scalar("SELECT count(*) FROM {s}.reliable_inbox") == 0
    assert env.scalar("SELECT count(*) FROM {s}.reliable_outbox") == 0
    name, failed_id, queue, exc_type, exc_message, attempts, trace = failures[0]
    assert (name, failed_id, queue, exc_type, attempts) == (
        "tests.celery_app.fail",
        task_id,
        "tasks",
        "builtins.ValueError",
        1,
    )
    assert "cannot process 'boom'" in exc_message
    assert "ValueError" in trace
    _method, props, _body = dead[0]
    assert props.correlation_id == task_id
    assert props.headers["x-death"][0]["reason"] == "rejected"


def test_retries_with_backoff_end_in_one_effect(env: Env) -> None:
    env.worker("w1", concurrency=2)

    env.send(tasks.flaky, "flaky", 2)
    env.send(tasks.retry_once, "retry")
    poll(
        lambda: env.effects("flaky") == 1 and env.effects("retry") == 1,
        timeout=60,
        what="both succeed",
    )
    poll(lambda: drained(env), what="queue drained")

    assert env.scalar("SELECT count(*) FROM {s}.attempts WHERE label = 'flaky'") == 3
    assert env.scalar("SELECT count(*) FROM {s}.attempts WHERE label = 'retry'") == 2
    assert env.effects("flaky") == 1
    assert env.effects("retry") == 1
    # Only the committed attempt's outbox row exists.
    assert env.scalar("SELECT count(*) FROM {s}.reliable_outbox") == 1
    assert env.scalar("SELECT count(*) FROM {s}.reliable_task_failures") == 0
    assert env.queue_state("dlq")[0] == 0


def test_exhausted_retries_are_dead_lettered_and_recorded_once(env: Env) -> None:
    env.worker("w1", concurrency=1)

    task_id = env.send(tasks.always_transient, "exhausted")
    poll(
        lambda: env.queue_state("dlq")[0] == 1,
        timeout=60,
        what="the message in the DLQ",
    )
    failures = env.rows(
        "SELECT task_id, exception_type, attempts FROM {s}.reliable_task_failures"
    )
    dead = env.get_all("dlq")

    assert (
        env.scalar("SELECT count(*) FROM {s}.attempts WHERE label = 'exhausted'") == 2
    )
    assert env.effects("exhausted") == 0
    assert failures == [(task_id, "tests.celery_app.TransientError", 2)]
    assert dead[0][1].correlation_id == task_id
    assert dead[0][1].headers["retries"] == 1


def test_hard_time_limit_requeues_until_the_delivery_limit_dead_letters_it(
    env: Env,
) -> None:
    env.worker("w1", concurrency=1, queues="limited")

    env.send(tasks.timeout, "slow")
    poll(
        lambda: env.queue_state("dlq")[0] == 1,
        timeout=60,
        what="the message in the DLQ",
    )
    dead = env.get_all("dlq")

    assert (
        env.deliveries("slow") == 2
    )  # x-delivery-limit 1: the first delivery and one redelivery
    assert env.effects("slow") == 0
    assert dead[0][1].headers["x-death"][0]["reason"] == "delivery_limit"
    assert json.loads(dead[0][2])[0] == ["slow"]
