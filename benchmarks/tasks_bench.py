"""
Throughput of ``@rel.task`` against a plain ``acks_late`` Celery task.

Both tasks do one INSERT in their own transaction; the decorated one also
claims its inbox row and stores its (null) result in that transaction. Each
round publishes N tasks of one kind to a quorum queue with no consumer, then
starts a worker (prefork, same settings for both kinds) and measures the rate
from the first to the last INSERT's ``clock_timestamp()``, so publishing and
worker start-up are not counted. Rounds alternate plain / reliable.

    python -m benchmarks.tasks_bench [--tasks 2000] [--rounds 4] [--concurrency 2]

Services: RELIABLE_BENCH_AMQP_URL, RELIABLE_BENCH_MANAGEMENT_URL,
RELIABLE_BENCH_DATABASE_URL (defaults: the local services).
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import psycopg
from psycopg import sql

from reliable.errors import ReliableError
from reliable.management import ManagementClient
from reliable.schema import SchemaManager

ROOT = Path(__file__).resolve().parents[1]


def vhost_url(amqp_url: str, vhost: str) -> str:
    parts = urlsplit(amqp_url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + quote(vhost, safe=""), "", ""))


def wait_for(check, timeout: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.1)


def in_process(db_url: str, schema: str, count: int) -> None:
    """The database part alone, in this process: plain transaction vs the inbox transaction."""
    from reliable import db, taskrun
    from reliable.inbox import Inbox

    insert = sql.SQL("INSERT INTO {}.bench (kind, n) VALUES (%s, %s)").format(
        sql.Identifier(schema)
    )
    connections = db.ProcessLocalConnection(db_url)
    conn = connections.get()
    inbox = Inbox(schema=schema)
    spec = taskrun.TaskSpec(consumer="bench.inprocess")

    def body(conn: psycopg.Connection[object], n: int) -> None:
        conn.execute(insert, ("reliable-inprocess", n))

    # Interleaved blocks, so load from other processes hits both sides alike.
    blocks, size = 10, max(1, count // 10)
    plain: list[float] = []
    wrapped: list[float] = []
    for _block in range(blocks):
        start = time.perf_counter()
        for n in range(size):
            with conn.transaction():
                conn.execute(insert, ("plain-inprocess", n))
        plain.append((time.perf_counter() - start) / size)
        start = time.perf_counter()
        for n in range(size):
            taskrun.execute(
                spec=spec,
                inbox=inbox,
                connections=connections,
                task_id=uuid.uuid4().hex,
                body=body,
                args=(n,),
                kwargs={},
            )
        wrapped.append((time.perf_counter() - start) / size)
    connections.discard()
    p, w = statistics.median(plain), statistics.median(wrapped)
    print(
        f"in-process, {blocks}x{size} transactions each: plain {p * 1000:.3f} ms, "
        f"inbox {w * 1000:.3f} ms per task (medians), ratio {p / w:.2f}",
        flush=True,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=2)
    args = parser.parse_args(argv)

    amqp_url = os.environ.get(
        "RELIABLE_BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F"
    )
    mgmt_url = os.environ.get(
        "RELIABLE_BENCH_MANAGEMENT_URL", "http://guest:guest@127.0.0.1:15672"
    )
    db_url = os.environ.get(
        "RELIABLE_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
    )
    tag = uuid.uuid4().hex[:8]
    vhost, schema = f"reliable-bench-tasks-{tag}", f"reliable_bench_tasks_{tag}"
    mgmt = ManagementClient(mgmt_url, timeout_seconds=90)
    for attempt in range(3):  # PUT is idempotent; a busy broker may drop the request
        try:
            mgmt.create_vhost(vhost)
            break
        except ReliableError:
            if attempt == 2:
                raise
    mgmt.grant_all(vhost, urlsplit(amqp_url).username or "guest")
    with psycopg.connect(db_url) as conn:
        SchemaManager(conn, schema=schema).migrate()
        conn.execute(
            sql.SQL(
                "CREATE TABLE {}.bench (id bigserial PRIMARY KEY, kind text, n int,"
                " at timestamptz NOT NULL DEFAULT clock_timestamp())"
            ).format(sql.Identifier(schema))
        )
        conn.commit()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELIABLE_")}
    env.update(
        RELIABLE_BENCH_BROKER=vhost_url(amqp_url, vhost),
        RELIABLE_BENCH_DATABASE_URL=db_url,
        RELIABLE_BENCH_SCHEMA=schema,
        PYTHONPATH=str(ROOT),
    )
    os.environ.update(env)
    from benchmarks import tasks_bench_app as bench

    rates: dict[str, list[float]] = {"plain": [], "reliable": []}
    try:
        for round_no in range(args.rounds):
            for kind, task in (
                ("plain", bench.plain),
                ("reliable", bench.reliable_insert),
            ):
                with psycopg.connect(db_url, autocommit=True) as conn:
                    conn.execute(
                        sql.SQL("TRUNCATE {}.bench").format(sql.Identifier(schema))
                    )
                with bench.app.producer_or_acquire() as producer:
                    for i in range(args.tasks):
                        task.apply_async((i,), producer=producer)
                worker = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "celery",
                        "-A",
                        "benchmarks.tasks_bench_app",
                        "worker",
                        "--pool=prefork",
                        f"--concurrency={args.concurrency}",
                        "--queues=bench",
                        "--without-gossip",
                        "--without-mingle",
                        "--loglevel=WARNING",
                    ],
                    cwd=ROOT,
                    env=env,
                    start_new_session=True,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                try:
                    with psycopg.connect(db_url, autocommit=True) as conn:
                        query = sql.SQL(
                            "SELECT count(*), extract(epoch FROM max(at) - min(at)) FROM {}.bench"
                        ).format(sql.Identifier(schema))

                        def done(
                            query: sql.Composed = query,
                        ) -> tuple[int, float] | None:
                            row = conn.execute(query).fetchone()
                            assert row is not None
                            return (
                                (int(row[0]), float(row[1]))
                                if row[0] >= args.tasks
                                else None
                            )

                        count, seconds = wait_for(done, 600, f"{kind} tasks")
                finally:
                    worker.send_signal(signal.SIGTERM)
                    worker.wait(60)
                rate = (count - 1) / seconds
                rates[kind].append(rate)
                print(
                    f"round {round_no + 1} {kind:8s} {count} tasks in {seconds:.2f}s: {rate:,.0f} tasks/s",
                    flush=True,
                )
        in_process(db_url, schema, args.tasks)
        plain_rate = statistics.median(rates["plain"])
        reliable_rate = statistics.median(rates["reliable"])
        print(
            f"plain acks_late task : {plain_rate:,.0f} tasks/s (median of {args.rounds})"
        )
        print(
            f"@rel.task            : {reliable_rate:,.0f} tasks/s (median of {args.rounds})"
        )
        print(f"ratio reliable/plain : {reliable_rate / plain_rate:.2f} (goal >= 0.8)")
    finally:
        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema))
            )
        try:
            mgmt.delete_vhost(vhost)
        except ReliableError as exc:
            print(
                f"could not delete vhost {vhost!r} ({exc}); delete it by hand",
                file=sys.stderr,
            )
        mgmt.close()


if __name__ == "__main__":
    main()
