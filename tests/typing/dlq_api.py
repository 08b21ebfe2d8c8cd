"""Checked by mypy only: how the dead-letter API is meant to be called."""

from __future__ import annotations

from pathlib import Path

from reliable.dlq import DeadLetters, ReplayFilter, ReplayReport, Target, replay
from reliable.dlq_archive import export


def nightly(url: str) -> bool:
    dl = DeadLetters(url, management_url="http://guest:guest@localhost:15672")
    letters, _ = dl.peek("orders.dlq", ReplayFilter(reasons=("rejected",), limit=10))
    names = [x.task_name for x in letters]
    report: ReplayReport = dl.replay(
        "orders.dlq", ReplayFilter(tasks=tuple(n for n in names if n)), rate=50.0
    )
    export(dl, "orders.dlq", Path("dead.jsonl"), remove=False)
    moved = dl.move(
        "orders.dlq", "orders.archive", ReplayFilter(older_than_seconds=86400)
    )
    quick = replay(url, "orders.dlq", target=Target(queue="orders"), dry_run=True)
    return moved.complete and quick.dry_run and report.complete
