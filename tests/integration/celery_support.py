"""Helpers for tests that run real Celery workers (and beats) as subprocesses."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pika
import pytest
from psycopg import sql

from tests.conftest import Broker, Database

ROOT = Path(__file__).resolve().parents[2]
T = TypeVar("T")

TABLES = """
CREATE TABLE {s}.effects (id bigserial PRIMARY KEY, label text NOT NULL, task_id text);
CREATE TABLE {s}.deliveries (id bigserial PRIMARY KEY, task_id text, label text, pid int,
                             at timestamptz NOT NULL DEFAULT clock_timestamp());
CREATE TABLE {s}.started (id bigserial PRIMARY KEY, label text, pid int);
CREATE TABLE {s}.attempts (id bigserial PRIMARY KEY, label text);
CREATE TABLE {s}.results (id bigserial PRIMARY KEY, task_id text, result jsonb);
"""


def poll(
    check: Callable[[], T], *, timeout: float = 30.0, what: str = "condition"
) -> T:
    """Call *check* until it returns something truthy; fail after *timeout* seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(
                f"timed out after {timeout:g}s waiting for {what} (last value {value!r})"
            )
        time.sleep(0.1)


@dataclass
class Env:
    """A prepared vhost + schema, and the processes started on it."""

    broker: Broker
    database: Database
    logs: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def environ(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RELIABLE_")}
        env.update(
            RELIABLE_TEST_CELERY_BROKER=self.broker.amqp_url,
            RELIABLE_TEST_CELERY_DATABASE_URL=self.database.url,
            RELIABLE_TEST_CELERY_SCHEMA=self.database.schema,
            PYTHONPATH=str(ROOT),
        )
        env.update(extra)
        return env

    def start(self, *args: str, name: str, **extra: str) -> subprocess.Popen[bytes]:
        log = (self.logs / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "tests.celery_app", *args],
            cwd=ROOT,
            env=self.environ(**extra),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own process group, so a test can SIGKILL all of it
        )
        self.procs.append(proc)
        return proc

    def worker(
        self,
        name: str,
        *,
        pool: str = "prefork",
        concurrency: int = 2,
        queues: str = "tasks",
        wait: bool = True,
        **extra: str,
    ) -> subprocess.Popen[bytes]:
        before = self.consumers(queues.split(",")[0])
        proc = self.start(
            "worker",
            f"--pool={pool}",
            f"--concurrency={concurrency}",
            f"--queues={queues}",
            f"--hostname={name}@%h",
            "--without-gossip",
            "--without-mingle",
            "--loglevel=INFO",
            name=name,
            **extra,
        )
        if wait:
            poll(
                lambda: (
                    proc.poll() is not None
                    or self.consumers(queues.split(",")[0]) > before
                ),
                timeout=60,
                what=f"worker {name} to consume",
            )
            assert proc.poll() is None, self.log(name)
        return proc

    def kill_group(self, proc: subprocess.Popen[bytes]) -> None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        """Warm shutdown: running tasks finish, prefetched ones go back to the queue."""
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)

    def log(self, name: str) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace")[-6000:] if path.exists() else ""

    # -- broker ----------------------------------------------------------------------

    def channel(self) -> Any:
        params = pika.URLParameters(self.broker.amqp_url)
        # Generous: the shared test broker can stall for seconds under other loads.
        params.socket_timeout = 30
        params.stack_timeout = 60
        return pika.BlockingConnection(params)

    def queue_state(self, queue: str) -> tuple[int, int]:
        """(ready messages, consumers) from a passive declare (live, unlike management stats)."""
        conn = self.channel()
        try:
            ok = conn.channel().queue_declare(queue, passive=True)
            return ok.method.message_count, ok.method.consumer_count
        except pika.exceptions.ChannelClosedByBroker:
            return 0, 0
        finally:
            conn.close()

    def consumers(self, queue: str) -> int:
        return self.queue_state(queue)[1]

    def get_all(self, queue: str) -> list[tuple[Any, Any, bytes]]:
        """Take (and ack) every ready message of *queue*."""
        conn = self.channel()
        try:
            ch = conn.channel()
            got = []
            while True:
                method, props, body = ch.basic_get(queue, auto_ack=True)
                if method is None:
                    return got
                got.append((method, props, body))
        finally:
            conn.close()

    # -- database --------------------------------------------------------------------

    def rows(self, query: str, *params: Any) -> list[tuple[Any, ...]]:
        with self.database.connect(autocommit=True) as conn:
            text = sql.SQL(query).format(s=sql.Identifier(self.database.schema))
            return conn.execute(text, params).fetchall()

    def scalar(self, query: str, *params: Any) -> Any:
        return self.rows(query, *params)[0][0]

    def effects(self, label: str) -> int:
        return int(
            self.scalar("SELECT count(*) FROM {s}.effects WHERE label = %s", label)
        )

    def deliveries(self, label: str) -> int:
        return int(
            self.scalar("SELECT count(*) FROM {s}.deliveries WHERE label = %s", label)
        )

    # -- sending -----------------------------------------------------------------------

    def send(self, task: Any, *args: Any, **options: Any) -> str:
        """``task.apply_async`` from this process onto the test's vhost."""
        from tests.celery_app import app

        with app.connection_for_write(self.broker.amqp_url) as conn:
            return str(task.apply_async(args, connection=conn, **options).id)


def prepare(broker: Broker, database: Database, logs: Path) -> Iterator[Env]:
    """Create the side-effect tables and the dead-letter exchange/queue; yield an `Env`."""
    with database.connect(autocommit=True) as conn:
        conn.execute(
            sql.SQL(TABLES.replace("{s}", "{0}")).format(
                sql.Identifier(database.schema)
            )
        )
    env = Env(broker, database, logs)
    conn_amqp = env.channel()
    try:
        ch = conn_amqp.channel()
        ch.exchange_declare("dlx", exchange_type="fanout", durable=True)
        ch.queue_declare("dlq", durable=True, arguments={"x-queue-type": "quorum"})
        ch.queue_bind("dlq", "dlx")
    finally:
        conn_amqp.close()
    try:
        yield env
    finally:
        env.close()
