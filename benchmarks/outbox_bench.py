"""
Outbox and relay benchmarks, each against a raw baseline measured in the same run.

    python -m benchmarks outbox_bench [--only throughput,latency,publish,memory,scaling]
        [--messages 20000] [--memory-messages 300000] [--rate 1000] [--seconds 10]

1. throughput: relay drain of N rows to a quorum queue vs raw pika
   SelectConnection with pipelined confirms (same window) to a twin queue;
   plus the relay's PostgreSQL cost per row (claim + delete, no broker).
2. latency: commit-to-delivered latency (p50/p99) at a fixed offered rate,
   relay in its own process; the consumer receives after the broker has
   enqueued (and so confirmed) the message, so this bounds commit-to-confirm.
3. publish: `Outbox.publish` inside the caller's transaction vs a bare INSERT
   of the same bytes into a plain table.
4. memory: the relay process RSS while draining many rows.
5. scaling: drain time with 1, 2 and 4 relay processes.

Services: RELIABLE_BENCH_AMQP_URL and RELIABLE_BENCH_DATABASE_URL (default: the local
test services). Queues and a schema of this run are created and dropped.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pika
import psycopg
from psycopg import sql

from reliable import Reliable, outbox_store
from reliable.relay import OutboxRelay, RelayConfig
from reliable.schema import SchemaManager

AMQP_URL = os.environ.get(
    "RELIABLE_BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F"
)
DATABASE_URL = os.environ.get(
    "RELIABLE_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
EXCHANGE = f"reliable.bench.{uuid.uuid4().hex[:8]}"
BODY = b'{"order":42,"pad":"' + b"x" * 220 + b'"}'  # 256 bytes


@dataclass
class Env:
    amqp_url: str
    database_url: str
    schema: str
    run: str
    queues: list[str] = field(default_factory=list)

    def queue(self, name: str) -> str:
        full = f"{name}.{self.run}"
        self.queues.append(full)
        return full


@contextmanager
def environment() -> Iterator[Env]:
    # The broker's own vhost with queue names of this run (creating a vhost
    # on a busy shared broker can take tens of seconds); queues go at the end.
    run = uuid.uuid4().hex[:8]
    schema = f"reliable_bench_{run}"
    with psycopg.connect(DATABASE_URL) as conn:
        SchemaManager(conn, schema=schema).migrate()
        conn.commit()
    env = Env(AMQP_URL, DATABASE_URL, schema, run)
    try:
        yield env
    finally:
        try:
            conn_ = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
            ch = conn_.channel()
            for queue in env.queues:
                ch.queue_delete(queue)
            ch.exchange_delete(EXCHANGE)
            conn_.close()
        finally:
            with psycopg.connect(DATABASE_URL, autocommit=True) as conn:
                conn.execute(
                    sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
                        sql.Identifier(schema)
                    )
                )


def declare(
    url: str, queue: str, *, quorum: bool = True, max_length: int | None = None
) -> None:
    conn = pika.BlockingConnection(pika.URLParameters(url))
    ch = conn.channel()
    ch.exchange_declare(EXCHANGE, exchange_type="direct", durable=True)
    args: dict[str, Any] = {"x-queue-type": "quorum"} if quorum else {}
    if max_length is not None:
        args.update({"x-max-length": max_length, "x-overflow": "drop-head"})
    ch.queue_declare(queue, durable=True, arguments=args)
    ch.queue_bind(queue, EXCHANGE, routing_key=queue)
    conn.close()


def purge(url: str, queue: str) -> None:
    conn = pika.BlockingConnection(pika.URLParameters(url))
    conn.channel().queue_purge(queue)
    conn.close()


def bulk_rows(env: Env, n: int, routing_key: str) -> None:
    """Insert n outbox rows in one statement (fast setup, not the measured write path)."""
    with psycopg.connect(env.database_url) as conn:
        conn.execute(
            sql.SQL(
                "INSERT INTO {}.reliable_outbox (message_id, exchange, routing_key, body, properties) "
                "SELECT gen_random_uuid()::text, %s, %s, %s, %s::jsonb FROM generate_series(1, %s)"
            ).format(sql.Identifier(env.schema)),
            [
                EXCHANGE,
                routing_key,
                BODY,
                '{"content_type":"application/json","delivery_mode":2}',
                n,
            ],
        )
        conn.commit()


def wait_drained(env: Env, *, timeout_seconds: float = 600.0, above: int = 0) -> None:
    """Wait until at most *above* outbox rows are left; fail loudly instead of hanging."""
    deadline = time.monotonic() + timeout_seconds
    while outbox_count(env) > above:
        if time.monotonic() > deadline:
            msg = f"outbox not drained within {timeout_seconds:.0f}s; check the relay's log"
            raise RuntimeError(msg)
        time.sleep(0.02)


def outbox_count(env: Env) -> int:
    with psycopg.connect(env.database_url) as conn:
        row = conn.execute(
            sql.SQL("SELECT count(*) FROM {}.reliable_outbox").format(
                sql.Identifier(env.schema)
            )
        ).fetchone()
        return int(row[0]) if row else 0


# -- raw baseline ----------------------------------------------------------------------


def raw_publish(
    url: str, routing_key: str, n: int, window: int, *, coalesce: bool = False
) -> float:
    """
    Publish n messages with plain pika SelectConnection and pipelined confirms; return seconds.

    With *coalesce*, the frames queued by each pump are joined into one write,
    as reliable's publisher does (pika otherwise makes one send() per frame).
    """
    outstanding: set[int] = set()
    state = {"sent": 0, "done": 0, "t0": 0.0, "t1": 0.0}
    props = pika.BasicProperties(
        content_type="application/json", delivery_mode=2, message_id="raw"
    )
    holder: dict[str, Any] = {}

    def pump() -> None:
        ch = holder["ch"]
        while state["sent"] < n and len(outstanding) < window:
            ch.basic_publish(EXCHANGE, routing_key, BODY, props, mandatory=True)
            state["sent"] += 1
            outstanding.add(state["sent"])
        buffers = getattr(
            getattr(holder["conn"], "_transport", None), "_tx_buffers", None
        )
        if coalesce and buffers is not None and len(buffers) > 1:
            joined = b"".join(buffers)
            buffers.clear()
            buffers.append(joined)

    def on_confirm(frame: Any) -> None:
        tag = frame.method.delivery_tag
        done = [t for t in outstanding if t <= tag] if frame.method.multiple else [tag]
        for t in done:
            outstanding.discard(t)
        state["done"] += len(done)
        if state["done"] >= n:
            state["t1"] = time.perf_counter()
            holder["conn"].close()
        else:
            pump()

    def on_select(_frame: Any) -> None:
        state["t0"] = time.perf_counter()
        pump()

    def on_channel(ch: Any) -> None:
        holder["ch"] = ch
        ch.confirm_delivery(on_confirm, callback=on_select)

    def on_open(conn: Any) -> None:
        conn.channel(on_open_callback=on_channel)

    conn = pika.SelectConnection(
        pika.URLParameters(url),
        on_open_callback=on_open,
        on_close_callback=lambda c, _r: c.ioloop.stop(),
    )
    holder["conn"] = conn
    conn.ioloop.start()
    return state["t1"] - state["t0"]


# -- 1. throughput ---------------------------------------------------------------------


def bench_throughput(env: Env, n: int, batch: int, window: int) -> None:
    q_relay, q_raw = env.queue("bench.relay"), env.queue("bench.raw")
    declare(env.amqp_url, q_relay)
    declare(env.amqp_url, q_raw)
    raw_s = raw_publish(env.amqp_url, q_raw, n, window)
    purge(env.amqp_url, q_raw)
    raw_joined_s = raw_publish(env.amqp_url, q_raw, n, window, coalesce=True)
    purge(env.amqp_url, q_raw)
    bulk_rows(env, n, q_relay)
    relay = OutboxRelay(
        database_url=env.database_url,
        amqp_url=env.amqp_url,
        schema=env.schema,
        config=RelayConfig(batch_size=batch, window=window),
    )
    t0 = time.perf_counter()
    stats = relay.run_once()
    relay_s = time.perf_counter() - t0
    purge(env.amqp_url, q_relay)
    assert stats.published == n, stats
    raw_rate, relay_rate = n / raw_s, n / relay_s
    joined_rate = n / raw_joined_s
    print(
        f"throughput: {n} msgs x {len(BODY)} B to a quorum queue, batch {batch}, window {window}\n"
        f"  raw pika pipelined confirms: {raw_rate:,.0f} msg/s\n"
        f"  raw pika pipelined confirms, frames joined per write: {joined_rate:,.0f} msg/s\n"
        f"  relay (claim+publish+delete): {relay_rate:,.0f} msg/s\n"
        f"  ratio relay/raw: {relay_rate / raw_rate:.2f} (goal >= 0.5); "
        f"relay/raw-joined: {relay_rate / joined_rate:.2f}"
    )
    # PostgreSQL cost per row: claim + delete without any broker I/O.
    bulk_rows(env, n, q_relay)
    token = uuid.uuid4()
    with psycopg.connect(env.database_url, autocommit=True) as conn:
        t0 = time.perf_counter()
        while True:
            rows = outbox_store.claim(
                conn, schema=env.schema, token=token, limit=batch, lease_seconds=60
            )
            if not rows:
                break
            outbox_store.mark_published(
                conn, [r.id for r in rows], schema=env.schema, keep=False
            )
        db_s = time.perf_counter() - t0
    print(f"  relay DB cost (claim + delete, no broker): {db_s / n * 1e6:.1f} us/row")


# -- 2. latency ------------------------------------------------------------------------


def start_relay_process(env: Env, *args: str) -> subprocess.Popen[bytes]:
    proc_env = {k: v for k, v in os.environ.items() if not k.startswith("RELIABLE_")}
    proc_env.update(
        RELIABLE_AMQP_URL=env.amqp_url,
        RELIABLE_DATABASE_URL=env.database_url,
        RELIABLE_DB_SCHEMA=env.schema,
        RELIABLE_LOG_LEVEL="WARNING",
    )
    return subprocess.Popen(
        [sys.executable, "-m", "reliable", "outbox", "relay", *args],
        env=proc_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def bench_latency(env: Env, rate: float, seconds: float) -> None:
    q = env.queue("bench.latency")
    declare(env.amqp_url, q)
    relay = start_relay_process(env)
    rel = Reliable(database_url=env.database_url, db_schema=env.schema)
    committed: dict[str, float] = {}
    received: dict[str, float] = {}
    total = int(rate * seconds)
    stop = threading.Event()

    def consume() -> None:
        conn = pika.BlockingConnection(pika.URLParameters(env.amqp_url))
        ch = conn.channel()
        ch.basic_qos(prefetch_count=1000)
        for method, props, _body in ch.consume(
            q, auto_ack=True, inactivity_timeout=0.2
        ):
            if method is not None:
                received[props.message_id] = time.perf_counter()
            if stop.is_set() and len(received) >= total:
                break
        ch.cancel()
        conn.close()

    consumer = threading.Thread(target=consume, daemon=True)
    consumer.start()
    time.sleep(2.0)  # let the relay reach its idle LISTEN wait
    # Several writers: one commit per message waits for a WAL flush, which
    # caps a single connection well below the offered rate on this machine.
    writers = 8
    t_start = time.perf_counter() + 0.5

    def writer(k: int) -> None:
        with psycopg.connect(env.database_url) as conn:
            for i in range(k, total, writers):
                pause = t_start + i / rate - time.perf_counter()
                if pause > 0:
                    time.sleep(pause)
                with conn.transaction():
                    mid = rel.outbox.publish(
                        conn, exchange=EXCHANGE, routing_key=q, body=BODY
                    )
                committed[mid] = time.perf_counter()

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    achieved = total / (time.perf_counter() - t_start)
    stop.set()
    deadline = time.monotonic() + 60
    while len(received) < total and time.monotonic() < deadline:
        time.sleep(0.1)
    stop_process(relay)
    lat = sorted(
        (received[m] - committed[m]) * 1000 for m in committed if m in received
    )
    p = statistics.quantiles(lat, n=100)
    print(
        f"latency: {total} msgs offered at {rate:,.0f}/s (achieved {achieved:,.0f}/s), "
        f"one message per transaction from {writers} writers, relay in its own process\n"
        f"  commit -> delivered to consumer: p50 {p[49]:.1f} ms, p90 {p[89]:.1f} ms, "
        f"p99 {p[98]:.1f} ms, max {lat[-1]:.1f} ms (goal p50 <= 10, p99 <= 50)\n"
        f"  received {len(lat)}/{total}"
    )


# -- 3. publish cost -------------------------------------------------------------------


def bench_publish(env: Env, n: int) -> None:
    rel = Reliable(database_url=env.database_url, db_schema=env.schema)
    schema = sql.Identifier(env.schema)
    with psycopg.connect(env.database_url) as conn:
        conn.execute(
            sql.SQL(
                "CREATE TABLE {}.plain (id bigserial PRIMARY KEY, message_id text, "
                "exchange text, routing_key text, body bytea, properties jsonb)"
            ).format(schema)
        )
        conn.commit()
        plain = sql.SQL(
            "INSERT INTO {}.plain (message_id, exchange, routing_key, body, properties) "
            "VALUES (%s, %s, %s, %s, %s)"
        ).format(schema)
        props = psycopg.types.json.Jsonb(
            {"content_type": "application/json", "delivery_mode": 2}
        )

        def run(fn: Any, per_tx: int) -> tuple[float, float]:
            """Milliseconds per message: inside the transaction, and including the commit."""
            inside = 0.0
            total = 0.0
            for _ in range(n // per_tx):
                t0 = time.perf_counter()
                with conn.transaction():
                    for _ in range(per_tx):
                        fn()
                    inside += time.perf_counter() - t0
                total += time.perf_counter() - t0
            return inside / n * 1000, total / n * 1000

        def bare() -> None:
            conn.execute(plain, [str(uuid.uuid4()), EXCHANGE, "k", BODY, props])

        def publish() -> None:
            rel.outbox.publish(
                conn,
                exchange=EXCHANGE,
                routing_key="k",
                body={"order": 42, "pad": "x" * 220},
            )

        def publish_keyed() -> None:
            rel.outbox.publish(
                conn,
                exchange=EXCHANGE,
                routing_key="k",
                body={"order": 42, "pad": "x" * 220},
                ordering_key="order-42",
            )

        print(
            f"publish cost: {n} messages; ms per message inside the transaction "
            "(what the caller's transaction pays) / including its share of the commit"
        )
        for per_tx in (100, 1):
            b_in, b_all = run(bare, per_tx)
            p_in, p_all = run(publish, per_tx)
            k_in, k_all = run(publish_keyed, per_tx)
            print(
                f"  {per_tx:>3} per tx: bare INSERT {b_in:.3f} / {b_all:.3f}; "
                f"publish {p_in:.3f} / {p_all:.3f} (ratio {p_in / b_in:.2f}); "
                f"publish with ordering_key {k_in:.3f} / {k_all:.3f} (ratio {k_in / b_in:.2f})"
            )
        print("  goal: publish <= 0.2 ms/message")
        # The rows written here go to an exchange nothing is bound to; left in
        # the table they would keep the later benchmarks' relays busy retrying.
        conn.execute(
            sql.SQL("DELETE FROM {}.reliable_outbox WHERE exchange = %s").format(
                schema
            ),
            [EXCHANGE],
        )
        conn.commit()


# -- 4. memory -------------------------------------------------------------------------


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def bench_memory(env: Env, n: int) -> None:
    # A drop-head queue keeps the shared broker's memory bounded; confirms are unchanged.
    q = env.queue("bench.memory")
    declare(env.amqp_url, q, quorum=False, max_length=10_000)
    relay = start_relay_process(env)
    try:
        time.sleep(2.0)
        samples: list[float] = [rss_mb(relay.pid)]
        chunk = 50_000
        t0 = time.perf_counter()
        deadline = time.monotonic() + 3600
        inserted = 0
        while inserted < n:
            bulk_rows(env, min(chunk, n - inserted), q)
            inserted += min(chunk, n - inserted)
            for above in (chunk // 2, 0) if inserted >= n else (chunk // 2,):
                while outbox_count(env) > above:
                    if time.monotonic() > deadline:
                        msg = "outbox not drained within an hour; check the relay's log"
                        raise RuntimeError(msg)
                    samples.append(rss_mb(relay.pid))
                    time.sleep(0.5)
        elapsed = time.perf_counter() - t0
        samples.append(rss_mb(relay.pid))
    finally:
        stop_process(relay)
    quarter = max(1, len(samples) // 4)
    print(
        f"memory: relay process drained {n:,} messages in {elapsed:.0f}s ({n / elapsed:,.0f} msg/s)\n"
        f"  RSS idle {samples[0]:.1f} MB, first quarter max {max(samples[:quarter]):.1f} MB, "
        f"last quarter max {max(samples[-quarter:]):.1f} MB, overall max {max(samples):.1f} MB "
        f"(goal < 100 MB and flat)"
    )


# -- 5. scaling ------------------------------------------------------------------------


def bench_scaling(env: Env, n: int) -> None:
    q = env.queue("bench.scaling")
    declare(env.amqp_url, q)
    results = {}
    for count in (1, 2, 4):
        relays = [start_relay_process(env, "--batch-size", "500") for _ in range(count)]
        try:
            time.sleep(3.0)  # all idle in LISTEN before the rows commit
            bulk_rows(env, n, q)
            t0 = time.perf_counter()
            wait_drained(env)
            results[count] = n / (time.perf_counter() - t0)
        finally:
            for r in relays:
                stop_process(r)
        purge(env.amqp_url, q)
    base = results[1]
    print(
        f"scaling: {n} messages to one quorum queue, relays as separate processes (2-core box)"
    )
    for count, rate in results.items():
        print(
            f"  {count} relay(s): {rate:,.0f} msg/s ({rate / base:.2f}x of one relay)"
        )


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks outbox_bench")
    parser.add_argument("--only", default="throughput,latency,publish,memory,scaling")
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--window", type=int, default=500)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--publish-messages", type=int, default=5_000)
    parser.add_argument("--memory-messages", type=int, default=300_000)
    args = parser.parse_args(argv)
    # A SIGTERM (e.g. from `timeout`) unwinds normally, so relay processes,
    # queues and the schema of this run are cleaned up.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    only = set(args.only.split(","))
    with environment() as env:
        if "throughput" in only:
            bench_throughput(env, args.messages, args.batch, args.window)
        if "latency" in only:
            bench_latency(env, args.rate, args.seconds)
        if "publish" in only:
            bench_publish(env, args.publish_messages)
        if "memory" in only:
            bench_memory(env, args.memory_messages)
        if "scaling" in only:
            bench_scaling(env, args.messages)


if __name__ == "__main__":
    main(sys.argv[1:])
