"""A real Celery worker consumes from a quorum queue that `apply` declared."""

from __future__ import annotations

import time

import kombu
import pytest
from celery import Celery
from celery.contrib.testing.worker import start_worker

from reliable.declare import plan
from reliable.declare_apply import apply, read_live_state
from reliable.tasks import celery_queues
from reliable.topology import Topology
from reliable.topology_file import loads
from tests.conftest import Broker


def applied_topology(broker: Broker) -> Topology:
    topology = loads(f"""
vhost: {broker.vhost}
exchanges:
  - {{name: shop, type: topic}}
  - {{name: shop.dlx, type: direct}}
queues:
  - name: shop.work
    type: quorum
    delivery_limit: 5
    message_ttl: 1h
    overflow: reject-publish
    dead_letter: {{exchange: shop.dlx, routing_key: shop.work, strategy: at-least-once}}
  - {{name: shop.dlq, delivery_limit: 5}}
bindings:
  - {{source: shop, destination: shop.work, routing_key: shop.work}}
  - {{source: shop.dlx, destination: shop.dlq, routing_key: shop.work}}
""")
    live = read_live_state(broker.management, broker.vhost)
    apply(
        plan(topology, live, broker_version=broker.management.broker_version()),
        amqp_url=broker.amqp_url,
        management=broker.management,
    )
    return topology


def test_celery_queues_carry_identical_arguments(broker: Broker) -> None:
    topology = loads(
        "exchanges: [{name: e, type: topic}]\nqueues: [{name: q, delivery_limit: 2}]\n"
        "bindings: [{source: e, destination: q, routing_key: 'k.*'}]"
    )

    (queue,) = celery_queues(topology)

    assert queue.queue_arguments == {"x-queue-type": "quorum", "x-delivery-limit": 2}
    assert (queue.exchange.name, queue.exchange.type, queue.routing_key) == (
        "e",
        "topic",
        "k.*",
    )
    assert queue.exchange.no_declare


def test_a_worker_consumes_from_the_applied_quorum_queue_without_406_or_540(
    broker: Broker,
) -> None:
    topology = applied_topology(broker)
    app = Celery("topology-test", broker=broker.amqp_url, set_as_current=False)
    app.conf.update(
        task_queues=celery_queues(topology),
        task_default_queue="shop.work",
        task_acks_late=True,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )
    seen: list[int] = []

    @app.task(name="shop.record")
    def record(value: int) -> None:
        seen.append(value)

    with start_worker(app, pool="solo", perform_ping_check=False, shutdown_timeout=10):
        record.apply_async(args=[7], queue="shop.work")
        deadline = time.monotonic() + 30
        while not seen and time.monotonic() < deadline:
            time.sleep(0.05)

    assert seen == [7]
    live = broker.management.queue(broker.vhost, "shop.work")
    assert live is not None
    assert live["arguments"] == topology.queues[0].declare_arguments()


def test_a_bare_kombu_queue_would_meet_406(broker: Broker) -> None:
    applied_topology(broker)

    with (
        kombu.Connection(broker.amqp_url) as conn,
        pytest.raises(Exception, match="PRECONDITION_FAILED") as info,
    ):
        kombu.Queue("shop.work", kombu.Exchange("shop", type="topic"), "shop.work")(
            conn.default_channel
        ).declare()

    assert "inequivalent arg" in str(info.value)
