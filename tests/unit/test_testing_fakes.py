from __future__ import annotations

import json

import pytest

from reliable import amqp
from reliable.testing import RecordingOutbox, RecordingPublisher


def test_recording_outbox_keeps_what_publish_would_store() -> None:
    outbox = RecordingOutbox()

    message_id = outbox.publish(
        None,  # type: ignore[arg-type]  # the fake ignores the connection
        exchange="shop.events",
        routing_key="order.created",
        body={"id": 42},
        headers={"tenant": "acme"},
    )

    (sent,) = outbox.sent
    assert sent.message_id == message_id
    assert (sent.exchange, sent.routing_key) == ("shop.events", "order.created")
    assert outbox.json_bodies() == [{"id": 42}]
    assert sent.properties["headers"] == {"tenant": "acme"}


def test_recording_outbox_still_refuses_an_unserializable_body() -> None:
    outbox = RecordingOutbox()

    with pytest.raises(TypeError):
        outbox.publish(None, exchange="e", routing_key="k", body={"x": object()})  # type: ignore[arg-type]

    assert outbox.sent == []


def _message(exchange: str, routing_key: str) -> amqp.OutgoingMessage:
    return amqp.OutgoingMessage(
        exchange=exchange,
        routing_key=routing_key,
        body=json.dumps({}).encode(),
        properties=amqp.Properties(message_id=f"{exchange}:{routing_key}"),
    )


def test_recording_publisher_reports_scripted_outcomes_in_order() -> None:
    publisher = RecordingPublisher(
        missing_exchanges={"gone"}, unroutable={"events:nobody"}
    )

    result = publisher.publish_batch(
        [
            _message("events", "order"),
            _message("gone", "x"),
            _message("events", "nobody"),
        ]
    )

    assert [o.status for o in result.outcomes] == ["confirmed", "refused", "returned"]
    assert [m.routing_key for m in publisher.published] == ["order"]


def test_recording_publisher_rules_take_precedence() -> None:
    def nack_everything(_message: amqp.OutgoingMessage) -> amqp.Outcome:
        return amqp.Outcome("nacked", "broker nacked")

    publisher = RecordingPublisher(rules=[nack_everything])

    result = publisher.publish_batch([_message("events", "order")])

    assert result.indexes("nacked") == [0]
    assert publisher.published == []
