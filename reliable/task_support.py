"""
Celery-free helpers of `reliable.tasks`: the settings effectively-once tasks
need, turning a captured Celery message into an outbox row, and beat slot ids.

Nothing here imports celery or kombu (`reliable.tasks` is the only module that
does); these are plain functions over Celery's data, unit-testable alone.
"""

from __future__ import annotations

import math
import uuid
from datetime import UTC, datetime
from typing import Any

from reliable.outbox import PROPERTY_NAMES, OutboxMessage, check_json

#: Per-task settings every effectively-once task runs with, and why:
#: ack only after the body's transaction committed (acks_late); a failure is
#: rejected without requeue so it reaches the queue's dead-letter exchange
#: instead of being acked away (acks_on_failure*); a killed worker process
#: requeues the message, which the inbox makes safe: a body that committed is
#: skipped on redelivery, one that did not is rolled back and runs again.
REQUIRED_TASK_SETTINGS: dict[str, bool] = {
    "acks_late": True,
    "acks_on_failure_or_timeout": False,
    "acks_on_failure": False,
    "acks_on_timeout": False,
    "reject_on_worker_lost": True,
}

#: Celery's native delayed delivery publishes countdown/eta tasks here (facts §3.4).
NATIVE_DELAY_EXCHANGE = "celery_delayed_27"


def queue_name(routing_key: str | None) -> str | None:
    """
    The queue a message was routed to, from its routing key.

    Native delayed delivery prefixes the key with 28 ``0``/``1`` levels
    (facts §3.4); drop them so failures group by the real queue.
    """
    if not routing_key:
        return routing_key
    parts = routing_key.split(".")
    if len(parts) > 28 and all(p in ("0", "1") for p in parts[:28]):
        return ".".join(parts[28:])
    return routing_key


def check_settings(app: Any, tasks: list[Any]) -> list[str]:
    """
    Problems with app settings that would defeat effectively-once tasks.

    Checked at worker start (``worker_init``); each problem is logged as a
    warning. Per-task attributes are set by the decorator, so this looks for
    what can still override or undermine them: eager mode, task annotations,
    and retries published without publisher confirms.
    """
    conf = app.conf
    problems: list[str] = []
    if conf.task_always_eager:
        problems.append(
            "task_always_eager=True runs tasks in the caller without the broker, acks or the "
            "inbox transaction semantics; disable it outside unit tests"
        )
    for task in tasks:
        for name, required in REQUIRED_TASK_SETTINGS.items():
            actual = getattr(task, name, None)
            if actual is not None and actual != required:
                problems.append(
                    f"task {task.name!r} has {name}={actual!r} (task_annotations?), "
                    f"effectively-once tasks need {required!r}; remove the override"
                )
    options = conf.broker_transport_options or {}
    if not options.get("confirm_publish"):
        problems.append(
            "broker_transport_options has no confirm_publish=True: a retry (self.retry or "
            "autoretry) is published unconfirmed and the original message is then acked, so "
            "a lost retry loses the task; set broker_transport_options={'confirm_publish': True}"
        )
    return problems


def outbox_message(
    captured: dict[str, Any], *, now: datetime | None = None
) -> OutboxMessage:
    """Turn one captured Celery message into an outbox row (message id = task id)."""
    headers = dict(captured["headers"])
    task_id = str(headers.get("id") or "")
    if not task_id:
        msg = "celery produced a message without a task id; only task protocol 2 is supported"
        raise ValueError(msg)
    body = captured["body"]
    encoding = captured["content_encoding"]
    if isinstance(body, str):
        body = body.encode(encoding if encoding and encoding != "binary" else "utf-8")
    properties: dict[str, Any] = {
        k: v for k, v in captured["properties"].items() if v is not None
    }
    unknown = set(properties) - PROPERTY_NAMES
    if unknown:
        msg = f"celery message has properties the outbox cannot store: {sorted(unknown)!r}"
        raise ValueError(msg)
    if captured["content_type"]:
        properties["content_type"] = captured["content_type"]
    if encoding:
        properties["content_encoding"] = encoding
    check_json(headers, "celery message headers")
    properties["headers"] = headers
    exchange = captured["exchange"]
    exchange = getattr(exchange, "name", exchange) or ""
    return OutboxMessage(
        message_id=task_id,
        exchange=str(exchange),
        routing_key=str(captured["routing_key"] or ""),
        body=bytes(body),
        properties=properties,
        delay_seconds=_row_delay(str(exchange), headers.get("eta"), now=now),
    )


def _row_delay(exchange: str, eta: Any, *, now: datetime | None) -> float:
    """
    Seconds the relay holds the row: until the task's ETA, unless the broker delays it.

    When Celery routed the message through native delayed delivery (quorum
    queues behind a non-direct exchange), the delay is encoded in the routing
    key and the broker waits; the row goes out at once. Otherwise the relay
    publishes at the ETA and the ``eta`` header is kept, so a worker still
    honours it but never holds the message in memory for long.
    """
    if exchange == NATIVE_DELAY_EXCHANGE or not eta:
        return 0.0
    due = datetime.fromisoformat(str(eta))
    if due.tzinfo is None:
        due = due.replace(tzinfo=UTC)
    seconds = (due - (now or datetime.now(UTC))).total_seconds()
    return max(0.0, seconds) if math.isfinite(seconds) else 0.0


#: Namespace of beat task ids (uuid5), so ids are stable across processes and hosts.
BEAT_NAMESPACE = uuid.UUID("6f0c7d3e-2b1a-5c9e-9b7e-0d4c1e2f3a5b")


def beat_task_id(entry_name: str, when: datetime, width_seconds: float) -> str:
    """
    The task id of the *entry_name* run due in the slot containing *when*.

    Slots are ``floor(unix time / width)``: two beat processes firing the
    same entry in the same slot produce the same id, and the inbox runs it once.
    """
    slot = math.floor(when.timestamp() / width_seconds)
    return str(uuid.uuid5(BEAT_NAMESPACE, f"{entry_name}|{width_seconds:g}|{slot}"))
