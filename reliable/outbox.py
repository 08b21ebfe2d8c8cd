"""
Transactional outbox: record messages inside the caller's PostgreSQL transaction.

Rows written here become visible to `reliable outbox relay` only if the
caller's transaction commits; the relay then publishes them with publisher
confirms. Nothing here commits, opens a connection or talks to RabbitMQ.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from reliable import adapters, db

JSON_CONTENT_TYPE = "application/json"
BINARY_CONTENT_TYPE = "application/octet-stream"

#: Basic properties an outbox row may carry (message_id has its own column).
PROPERTY_NAMES = frozenset(
    {
        "content_type",
        "content_encoding",
        "headers",
        "correlation_id",
        "priority",
        "expiration",
        "type",
        "reply_to",
        "delivery_mode",
        "app_id",
        "timestamp",
    }
)


@dataclass(frozen=True, slots=True, kw_only=True)
class OutboxMessage:
    """A message ready to be stored: body already encoded, properties JSON-safe."""

    message_id: str
    exchange: str
    routing_key: str
    body: bytes
    properties: Mapping[str, Any] = field(default_factory=dict)
    ordering_key: str | None = None
    delay_seconds: float = 0.0

    def __post_init__(self) -> None:
        unknown = set(self.properties) - PROPERTY_NAMES
        if unknown:
            msg = f"unknown message properties {sorted(unknown)!r}; allowed: {sorted(PROPERTY_NAMES)!r}"
            raise ValueError(msg)
        if not self.message_id:
            msg = "message_id must not be empty"
            raise ValueError(msg)
        if not math.isfinite(self.delay_seconds) or self.delay_seconds < 0:
            msg = f"delay must be a finite, non-negative number of seconds, got {self.delay_seconds!r}"
            raise ValueError(msg)


def encode_body(
    body: Any, content_type: str | None = None
) -> tuple[bytes, str, str | None]:
    """
    Return ``(bytes, content_type, content_encoding)`` for *body*.

    Bytes pass through unchanged (``application/octet-stream`` unless a
    content type is given); anything else is encoded as JSON now, so a body
    that cannot be serialized fails inside the caller's transaction rather
    than in the relay.

    Raises:
        TypeError: *body* is not bytes and not JSON-serializable.
    """
    if isinstance(body, bytes | bytearray | memoryview):
        return bytes(body), content_type or BINARY_CONTENT_TYPE, None
    try:
        text = json.dumps(
            body, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )
    except (TypeError, ValueError) as exc:
        msg = (
            f"message body of type {type(body).__name__} cannot be encoded as JSON ({exc}); "
            "pass bytes with a content_type, or JSON-serializable data"
        )
        raise TypeError(msg) from None
    return text.encode("utf-8"), content_type or JSON_CONTENT_TYPE, "utf-8"


def check_json(value: Any, what: str) -> None:
    """Raise `TypeError` now if *value* cannot be stored as JSON."""
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        msg = f"{what} must be JSON-serializable ({exc}); use str, int, float, bool, None, lists and dicts"
        raise TypeError(msg) from None


def delay_from(delay: float | timedelta | None, eta: datetime | None = None) -> float:
    """Seconds from now until a message is due: *delay* (seconds or timedelta) or an absolute *eta*."""
    if delay is not None and eta is not None:
        msg = "give delay or eta, not both"
        raise ValueError(msg)
    if eta is not None:
        if eta.tzinfo is None:
            msg = f"eta {eta!r} has no time zone; pass an aware datetime"
            raise ValueError(msg)
        return max(0.0, (eta - datetime.now(UTC)).total_seconds())
    if isinstance(delay, timedelta):
        return delay.total_seconds()
    return float(delay or 0.0)


class Outbox:
    """
    Write messages into the outbox table in the caller's transaction.

    Args:
        schema: PostgreSQL schema holding ``reliable_outbox``.
        celery_app: Needed only by `enqueue`, to build Celery's own message.
    """

    def __init__(self, *, schema: str = "reliable", celery_app: Any = None) -> None:
        self.schema = schema
        self.celery_app = celery_app

    def __repr__(self) -> str:
        return f"Outbox(schema={self.schema!r})"

    def publish(
        self,
        conn: db.Connection,
        *,
        exchange: str,
        routing_key: str,
        body: Any,
        headers: Mapping[str, Any] | None = None,
        message_id: str | None = None,
        content_type: str | None = None,
        ordering_key: str | None = None,
        delay: float | timedelta | None = None,
        priority: int | None = None,
        correlation_id: str | None = None,
        message_type: str | None = None,
        expiration: float | timedelta | None = None,
    ) -> str:
        """
        Record a message to publish once the caller's transaction commits.

        ::

            with psycopg.connect(dsn) as conn, conn.transaction():
                conn.execute("insert into orders ...")
                rel.outbox.publish(
                    conn,
                    exchange="shop.events",
                    routing_key="order.created",
                    body={"id": 42},
                )

        Args:
            conn: The caller's psycopg connection (or a SQLAlchemy Session or
                Connection, or a Django connection; see `reliable.adapters`);
                never committed here.
            body: JSON-serializable data, or bytes (then give *content_type*).
            headers: JSON-serializable AMQP headers.
            message_id: The AMQP ``message_id``; a UUID when omitted.
            ordering_key: Messages with the same key are published in commit order.
            delay: Seconds (or a timedelta) before the relay may publish it.
            expiration: Per-message TTL set on the AMQP message.

        Returns:
            The message id.

        Raises:
            TypeError: The body or headers cannot be serialized.
            reliable.errors.SchemaNotInstalled: The outbox table is missing.

        .. versionadded:: 0.1.0
        """
        data, ctype, encoding = encode_body(body, content_type)
        properties: dict[str, Any] = {"content_type": ctype, "delivery_mode": 2}
        if encoding:
            properties["content_encoding"] = encoding
        if headers:
            check_json(dict(headers), "headers")
            properties["headers"] = dict(headers)
        if priority is not None:
            properties["priority"] = int(priority)
        if correlation_id is not None:
            properties["correlation_id"] = correlation_id
        if message_type is not None:
            properties["type"] = message_type
        if expiration is not None:
            seconds = (
                expiration.total_seconds()
                if isinstance(expiration, timedelta)
                else expiration
            )
            properties["expiration"] = str(max(0, round(seconds * 1000)))
        message = OutboxMessage(
            message_id=message_id or str(uuid.uuid4()),
            exchange=exchange,
            routing_key=routing_key,
            body=data,
            properties=properties,
            ordering_key=ordering_key,
            delay_seconds=delay_from(delay),
        )
        return self.add(conn, message)

    def add(self, conn: db.Connection, message: OutboxMessage) -> str:
        """
        Store an already-encoded message in the caller's transaction.

        *conn* is a psycopg 3 connection, or a SQLAlchemy ``Session`` /
        ``Connection`` or Django connection on psycopg 3 (see
        `reliable.adapters`).

        The low-level twin of `publish`, used by `enqueue` and by callers that
        build AMQP properties themselves.
        """
        db.execute(
            adapters.resolve_connection(conn),
            "insert_outbox",
            {
                "message_id": message.message_id,
                "exchange": message.exchange,
                "routing_key": message.routing_key,
                "body": message.body,
                "properties": db.jsonb(dict(message.properties)),
                "ordering_key": message.ordering_key,
                "delay_seconds": message.delay_seconds,
            },
            schema=self.schema,
        )
        return message.message_id

    def enqueue(
        self, conn: db.Connection, signature: Any, *, task_id: str | None = None
    ) -> str:
        """
        Record the Celery task message(s) *signature* would publish.

        ::

            with pool.connection() as conn, conn.transaction():
                conn.execute("insert into orders ...")
                task_id = rel.outbox.enqueue(
                    conn, charge.s(42).set(queue="payments", countdown=30)
                )

        Celery builds the message with its own machinery (``apply_async``:
        routing with ``task_routes`` and default queue/exchange, protocol 2
        headers and body, serializer, priority, expiry, canvas), so a worker
        cannot tell it from one sent by ``apply_async``. The task id is fixed
        now and is also the row's AMQP ``message_id``. A countdown or eta
        becomes the row's delay (the ``eta`` header is kept), except when
        Celery routes the task through native delayed delivery, where the
        broker waits. Chains store their first task's message, groups one
        message per task.

        Args:
            conn: The caller's psycopg connection; never committed here.
            signature: Any Celery signature or canvas.
            task_id: Fix the id yourself (default: a new UUID, as Celery does).

        Returns:
            The task id ``signature.apply_async()`` would have returned.

        Raises:
            reliable.errors.ConfigError: The Celery app runs in eager mode.
            TypeError: The arguments do not fit the task, or cannot be serialized.

        .. versionadded:: 0.1.0
        """
        # Imported here so that importing reliable.outbox does not import Celery.
        from reliable import tasks

        return tasks.enqueue(self, conn, signature, task_id=task_id)
