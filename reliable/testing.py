"""
Public fakes for unit tests of code that uses reliable.

Integration tests should use the real RabbitMQ and PostgreSQL; these fakes
are for the fast tier, where an application wants to check *what* it would
send without a database or a broker::

    from reliable.testing import RecordingOutbox


    def test_checkout_announces_the_order():
        outbox = RecordingOutbox()
        checkout(conn=None, outbox=outbox, order_id=42)
        assert outbox.sent[0].routing_key == "order.created"
        assert outbox.json_bodies() == [{"id": 42}]

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from reliable import amqp, db
from reliable.outbox import Outbox, OutboxMessage


class RecordingOutbox(Outbox):
    """
    An `Outbox` that keeps messages in memory instead of writing rows.

    `publish` and `enqueue` run their real validation and encoding (a body
    that cannot be serialized still raises ``TypeError``, a Celery signature
    is still turned into the exact message Celery would publish); only the
    final INSERT is replaced. The *conn* argument is ignored, so tests may
    pass ``None``.
    """

    def __init__(self, *, schema: str = "reliable", celery_app: Any = None) -> None:
        super().__init__(schema=schema, celery_app=celery_app)
        self.sent: list[OutboxMessage] = []

    def add(self, conn: db.Connection | None, message: OutboxMessage) -> str:
        self.sent.append(message)
        return message.message_id

    def json_bodies(self) -> list[Any]:
        """The bodies of the recorded messages, decoded from JSON."""
        return [json.loads(m.body) for m in self.sent]

    def clear(self) -> None:
        self.sent.clear()


#: Decides the outcome of one message in `RecordingPublisher`.
OutcomeRule = Callable[[amqp.OutgoingMessage], amqp.Outcome | None]


@dataclass
class RecordingPublisher:
    """
    A stand-in for `reliable.amqp.ConfirmingPublisher` that confirms in memory.

    Every message is ``confirmed`` unless its exchange is in
    *missing_exchanges* (``refused``), its ``exchange:routing_key`` is in
    *unroutable* (``returned``), or a *rule* returns another outcome. Only
    confirmed messages are added to `published`, as a broker would keep only
    those.
    """

    missing_exchanges: set[str] = field(default_factory=set)
    unroutable: set[str] = field(default_factory=set)
    rules: list[OutcomeRule] = field(default_factory=list)
    published: list[amqp.OutgoingMessage] = field(default_factory=list)
    batches: int = 0
    is_open: bool = False

    def connect(self) -> None:
        self.is_open = True

    def close(self) -> None:
        self.is_open = False

    def poll(self, seconds: float = 0.0) -> None:
        """Nothing to service: there is no connection."""

    def publish_batch(
        self, messages: Sequence[amqp.OutgoingMessage], *, timeout_seconds: float = 30.0
    ) -> amqp.PublishResult:
        self.connect()
        self.batches += 1
        outcomes = [self._outcome(m) for m in messages]
        self.published.extend(
            m
            for m, o in zip(messages, outcomes, strict=True)
            if o.status == "confirmed"
        )
        return amqp.PublishResult(outcomes)

    def _outcome(self, message: amqp.OutgoingMessage) -> amqp.Outcome:
        for rule in self.rules:
            decided = rule(message)
            if decided is not None:
                return decided
        if message.exchange in self.missing_exchanges:
            return amqp.Outcome("refused", f"no exchange {message.exchange!r}")
        if f"{message.exchange}:{message.routing_key}" in self.unroutable:
            return amqp.Outcome("returned", "312 NO_ROUTE")
        return amqp.Outcome("confirmed")
