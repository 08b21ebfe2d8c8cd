"""Helpers that make dead letters for real (reject, TTL, max-length, delivery limit)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pika

DLX = "dlx"
DLQ = "dlq"


def connect(url: str) -> pika.BlockingConnection:
    return pika.BlockingConnection(pika.URLParameters(url))


def wait_for(
    condition: Callable[[], bool], *, timeout: float = 20.0, what: str = ""
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what or condition}")


def depth(ch: Any, queue: str) -> int:
    return int(ch.queue_declare(queue, passive=True).method.message_count)


def wait_depth(ch: Any, queue: str, n: int, timeout: float = 20.0) -> None:
    wait_for(
        lambda: depth(ch, queue) == n, timeout=timeout, what=f"{queue} to hold {n}"
    )


def setup(ch: Any, *, dlq_type: str = "classic") -> None:
    """A fanout DLX ``dlx`` into ``dlq`` and work queues that dead-letter into it."""
    ch.exchange_declare(DLX, "fanout", durable=True)
    ch.queue_declare(DLQ, durable=True, arguments={"x-queue-type": dlq_type})
    ch.queue_bind(DLQ, DLX)
    dl = {"x-dead-letter-exchange": DLX}
    ch.queue_declare("work", durable=True, arguments=dl)
    ch.queue_declare("other", durable=True, arguments=dl)


def publish(ch: Any, queue: str, body: bytes, **props: Any) -> None:
    ch.basic_publish("", queue, body, pika.BasicProperties(delivery_mode=2, **props))


def reject_all(ch: Any, queue: str) -> int:
    n = 0
    while True:
        method, _p, _b = ch.basic_get(queue)
        if method is None:
            return n
        ch.basic_reject(method.delivery_tag, requeue=False)
        n += 1


def dead_letter(ch: Any, queue: str, body: bytes, **props: Any) -> None:
    """Publish to *queue* and reject it, so it lands in the DLQ with reason ``rejected``."""
    publish(ch, queue, body, **props)
    wait_for(lambda: depth(ch, queue) >= 1, what=f"{queue} to get the message")
    reject_all(ch, queue)


def drain(ch: Any, queue: str) -> list[tuple[Any, bytes]]:
    out = []
    while True:
        method, props, body = ch.basic_get(queue, auto_ack=True)
        if method is None:
            return out
        out.append((props, body))


def snapshot(ch: Any, queue: str) -> list[tuple[bytes, Any, Any, Any]]:
    """Bodies and identity/headers of *queue* in order, leaving it as it was (classic queues)."""
    side = ch.connection.channel()
    seen = []
    while True:
        method, props, body = side.basic_get(queue)
        if method is None:
            break
        headers = dict(props.headers or {})
        headers.pop("x-delivery-count", None)
        seen.append((body, props.message_id, props.correlation_id, headers))
    side.close()
    return seen
