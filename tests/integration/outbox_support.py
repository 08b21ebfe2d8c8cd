"""Helpers shared by the relay tests: topology, writing rows, reading queues."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from typing import Any

import pika
from psycopg import sql

from reliable import Reliable
from reliable.relay import OutboxRelay, RelayConfig
from reliable.retry import RetryPolicy
from tests.conftest import Broker, Database

EXCHANGE = "shop.events"


def declare(amqp_url: str, *queues: str, exchange: str = EXCHANGE) -> None:
    """A direct exchange and one quorum queue per routing key (same name)."""
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        ch = conn.channel()
        ch.exchange_declare(exchange, exchange_type="direct", durable=True)
        for queue in queues:
            ch.queue_declare(queue, durable=True, arguments={"x-queue-type": "quorum"})
            ch.queue_bind(queue, exchange, routing_key=queue)
    finally:
        conn.close()


def write(
    database: Database,
    messages: Iterable[dict[str, Any]],
) -> list[str]:
    """Write messages in one committed transaction; return their ids."""
    rel = Reliable(database_url=database.url, db_schema=database.schema)
    ids = []
    with database.connect() as conn, conn.transaction():
        for m in messages:
            ids.append(rel.outbox.publish(conn, **{"exchange": EXCHANGE, **m}))
    return ids


def read_queue(
    amqp_url: str,
    queue: str,
    *,
    expect: int,
    timeout: float = 30.0,
    settle: float = 0.3,
) -> list[tuple[str, Any]]:
    """
    Take messages from *queue* until *expect* arrived (then wait *settle* more
    seconds for extras such as duplicates) or *timeout* passed.
    Returns ``(message_id, decoded body)`` in arrival order.
    """
    got: list[tuple[str, Any]] = []
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        ch = conn.channel()
        ch.basic_qos(prefetch_count=500)
        deadline = time.monotonic() + timeout
        quiet_since: float | None = None
        for method, props, body in ch.consume(
            queue, auto_ack=True, inactivity_timeout=0.05
        ):
            now = time.monotonic()
            if method is None:
                if len(got) >= expect:
                    quiet_since = quiet_since or now
                    if now - quiet_since >= settle:
                        break
                if now >= deadline:
                    break
                continue
            quiet_since = None
            try:
                value: Any = json.loads(body)
            except ValueError:
                value = body
            got.append((props.message_id, value))
            if now >= deadline:
                break
        ch.cancel()
    finally:
        conn.close()
    return got


def queue_depth(amqp_url: str, queue: str) -> int:
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        ch = conn.channel()
        return int(ch.queue_declare(queue, passive=True).method.message_count)
    finally:
        conn.close()


def outbox_rows(database: Database, where: str = "true") -> list[dict[str, Any]]:
    with database.connect() as conn:
        cur = conn.execute(
            sql.SQL(
                "SELECT id, message_id, attempts, last_error, dead_at, published_at, "
                "available_at, claim_token FROM {}.reliable_outbox WHERE "
            ).format(sql.Identifier(database.schema))
            + sql.SQL(where)  # test-controlled literal
        )
        cols = [c.name for c in cur.description or []]
        return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]


def make_relay(
    broker: Broker | str,
    database: Database,
    *,
    retry: RetryPolicy | None = None,
    **config: Any,
) -> OutboxRelay:
    url = broker if isinstance(broker, str) else broker.amqp_url
    defaults: dict[str, Any] = {
        "lease_seconds": 10.0,
        "confirm_timeout_seconds": 5.0,
        "poll_interval_seconds": 0.2,
    }
    return OutboxRelay(
        database_url=database.url,
        amqp_url=url,
        schema=database.schema,
        config=RelayConfig(**{**defaults, **config}),
        retry_policy=retry,
    )


def wait_for(
    condition: Callable[[], bool], *, timeout: float = 20.0, what: str = "condition"
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")
