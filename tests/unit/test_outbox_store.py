from __future__ import annotations

from datetime import UTC, datetime

from reliable.outbox_store import ClaimedRow


def test_claimed_row_becomes_the_amqp_message_with_its_id_and_properties() -> None:
    row = ClaimedRow(
        id=7,
        message_id="m-7",
        exchange="shop.events",
        routing_key="order.created",
        body=b'{"id":42}',
        properties={
            "content_type": "application/json",
            "content_encoding": "utf-8",
            "headers": {"tenant": "acme"},
            "priority": 3,
            "expiration": "60000",
            "type": "order.created",
            "correlation_id": "c-1",
        },
        ordering_key=None,
        attempts=0,
        created_at=datetime.now(UTC),
    )

    message = row.to_message()

    assert (message.exchange, message.routing_key, message.body) == (
        "shop.events",
        "order.created",
        b'{"id":42}',
    )
    props = message.properties
    assert props.message_id == "m-7"
    assert props.delivery_mode == 2  # persistent unless the row says otherwise
    assert props.headers == {"tenant": "acme"}
    assert (props.priority, props.expiration, props.type, props.correlation_id) == (
        3,
        "60000",
        "order.created",
        "c-1",
    )
