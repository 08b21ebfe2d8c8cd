"""
A failing effectively-once task (``@rel.task``) on a real worker subprocess:
dead-lettered by the broker, grouped by its failure record, replayed, and
dead-lettered again with our counters, its effects rolled back each time.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from reliable.dlq import DeadLetters
from reliable.dlq_filters import Filter
from tests import celery_app as tasks
from tests.conftest import Broker, Database
from tests.integration.celery_support import Env, poll, prepare

pytestmark = pytest.mark.slow


@pytest.fixture(name="env")
def _env(broker: Broker, database: Database, tmp_path: Path) -> Iterator[Env]:
    yield from prepare(broker, database, tmp_path)


def test_failing_effectively_once_task_is_grouped_replayed_and_counted(
    env: Env,
) -> None:
    env.worker("w1", concurrency=1)
    failing = env.send(tasks.fail, "boom")
    working = env.send(tasks.record, "fine")
    poll(lambda: env.queue_state("dlq")[0] == 1, what="the failed task in the DLQ")
    poll(lambda: env.effects("fine") == 1, what="the working task to run")
    dl = DeadLetters(
        env.broker.amqp_url,
        management_url=env.broker.management_url,
        database_url=env.database.url,
        db_schema=env.database.schema,
    )

    [letter], _ = dl.peek("dlq", Filter(exceptions=("ValueError",)))
    report = dl.replay("dlq", Filter(tasks=("tests.celery_app.fail",)))
    poll(
        lambda: env.scalar("SELECT count(*) FROM {s}.reliable_task_failures") == 2,
        what="the replayed task to fail again",
    )
    poll(lambda: env.queue_state("dlq")[0] == 1, what="the failed task back in the DLQ")
    [again], _ = dl.peek("dlq")

    assert working != failing
    assert letter.task_id == failing
    assert letter.task_name == "tests.celery_app.fail"
    assert letter.exception_type == "builtins.ValueError"
    assert (letter.origin.queue, letter.origin.reason) == ("tasks", "rejected")
    assert report.counts["replayed"] == 1
    assert again.task_id == failing
    assert again.replay_count == 1
    assert again.origin.queue == "tasks"
    assert (
        again.origin.deaths[0].count == 1
    )  # the broker's count restarted; ours did not
    assert env.effects("boom") == 0  # rolled back on every attempt
