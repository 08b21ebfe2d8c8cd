from __future__ import annotations

import psycopg
import pytest

from reliable import amqp, errors
from reliable.schema import SchemaManager, required_version
from tests.conftest import Broker, Database


def _message(exchange: str, routing_key: str, message_id: str) -> amqp.OutgoingMessage:
    return amqp.OutgoingMessage(
        exchange=exchange,
        routing_key=routing_key,
        body=b"{}",
        properties=amqp.Properties(
            message_id=message_id, content_type="application/json"
        ),
    )


def test_publisher_reports_each_message_outcome(broker: Broker) -> None:
    with amqp.open_channel(broker.amqp_url) as channel:
        channel.declare_queue("work", arguments={"x-queue-type": "quorum"})
        channel.declare_exchange("events", type="topic")
        channel.bind_queue("work", "events", "order.*")
    publisher = amqp.ConfirmingPublisher(broker.amqp_url, window=2)
    batch = [
        _message("events", "order.created", "routed"),
        _message("events", "nobody.listens", "unroutable"),
        _message("missing-exchange", "x", "refused"),
        _message("", "work", "direct"),
    ]

    try:
        result = publisher.publish_batch(batch, timeout_seconds=10)
    finally:
        publisher.close()

    assert [o.status for o in result.outcomes] == [
        "confirmed",
        "returned",
        "refused",
        "confirmed",
    ]
    with amqp.open_channel(broker.amqp_url) as channel:
        state = channel.queue_state("work")
    assert state is not None
    assert state.message_count == 2


def test_publisher_pipelines_many_batches_on_one_channel(broker: Broker) -> None:
    with amqp.open_channel(broker.amqp_url) as channel:
        channel.declare_queue("work", arguments={"x-queue-type": "quorum"})
    publisher = amqp.ConfirmingPublisher(broker.amqp_url, window=50)

    try:
        results = [
            publisher.publish_batch(
                [_message("", "work", f"{b}-{i}") for i in range(300)],
                timeout_seconds=30,
            )
            for b in range(3)
        ]
    finally:
        publisher.close()

    assert [len(r.confirmed) for r in results] == [300, 300, 300]
    with amqp.open_channel(broker.amqp_url) as channel:
        state = channel.queue_state("work")
    assert state is not None
    assert state.message_count == 900


def test_open_channel_to_a_closed_port_raises_a_connection_error() -> None:
    with (
        pytest.raises(errors.BrokerConnectionError) as info,
        amqp.open_channel(
            "amqp://guest:topsecret@127.0.0.1:1/%2F", connect_timeout_seconds=2
        ),
    ):
        pass

    assert "topsecret" not in str(info.value)


def test_redeclaring_with_other_arguments_is_refused_with_the_reply_code(
    broker: Broker,
) -> None:
    with amqp.open_channel(broker.amqp_url) as channel:
        channel.declare_queue("q", arguments={"x-queue-type": "quorum"})
        with pytest.raises(errors.BrokerRefused) as info:
            channel.declare_queue("q", arguments={"x-queue-type": "classic"})
        still_usable = channel.queue_state("q")

    assert info.value.reply_code == 406
    assert still_usable is not None


def test_management_client_reads_version_and_queue_arguments(broker: Broker) -> None:
    with amqp.open_channel(broker.amqp_url) as channel:
        channel.declare_queue(
            "q", arguments={"x-queue-type": "quorum", "x-delivery-limit": 3}
        )

    version = broker.management.broker_version()
    queues = broker.management.queues(broker.vhost)

    assert version >= (3, 10, 0)
    assert [(q["name"], q["arguments"]["x-delivery-limit"]) for q in queues] == [
        ("q", 3)
    ]


def test_migrate_is_idempotent_and_check_passes(database: Database) -> None:
    with database.connect() as conn:
        manager = SchemaManager(conn, schema=database.schema)
        again = manager.migrate()
        version = manager.check()

    assert again == []
    assert version == required_version()


def test_check_on_an_empty_schema_says_to_migrate(database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        manager = SchemaManager(conn, schema="reliable_never_created")
        with pytest.raises(errors.SchemaNotInstalled) as info:
            manager.check()

    assert info.value.found is None
