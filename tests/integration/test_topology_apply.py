"""apply() against the real broker: read-back, idempotency, conflicts, prune, export."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pika
import pytest

from reliable import errors
from reliable.declare import Plan, plan
from reliable.declare_apply import apply, prune_candidates, read_live_state
from reliable.management import ManagementClient
from reliable.topology import Topology
from reliable.topology_export import export_topology
from reliable.topology_file import dump_topology, load_topology, loads
from tests.conftest import Broker, vhost_url

EXAMPLES = Path(__file__).parents[2] / "topology"


def for_vhost(topology: Topology, vhost: str) -> Topology:
    return topology.model_copy(update={"vhost": vhost})


def plan_for(broker: Broker, topology: Topology) -> Plan:
    live = read_live_state(broker.management, topology.vhost)
    return plan(topology, live, broker_version=broker.management.broker_version())


def apply_topology(broker: Broker, topology: Topology, **kwargs: object) -> list[str]:
    report = apply(
        plan_for(broker, topology),
        amqp_url=broker.amqp_url,
        management=broker.management,
        **kwargs,
    )  # type: ignore[arg-type]
    return report.applied + report.pruned


@pytest.fixture(name="channel")
def _channel(
    broker: Broker,
) -> Iterator[pika.adapters.blocking_connection.BlockingChannel]:
    connection = pika.BlockingConnection(pika.URLParameters(broker.amqp_url))
    try:
        yield connection.channel()
    finally:
        if connection.is_open:
            connection.close()


def test_apply_declares_every_argument_as_the_file_says(broker: Broker) -> None:
    topology = for_vhost(load_topology(EXAMPLES), broker.vhost)

    apply_topology(broker, topology)

    mgmt = broker.management
    queues = {q["name"]: q for q in mgmt.queue_definitions(broker.vhost)}
    for queue in topology.queues:
        assert queues[queue.name]["arguments"] == queue.declare_arguments(), queue.name
        assert queues[queue.name]["type"] == queue.type
    exchanges = {e["name"]: e for e in mgmt.exchanges(broker.vhost)}
    for exchange in topology.exchanges:
        assert exchanges[exchange.name]["type"] == exchange.type
        assert exchanges[exchange.name]["arguments"] == exchange.declare_arguments()
    bindings = {
        (b["source"], b["destination"], b["routing_key"])
        for b in mgmt.bindings(broker.vhost)
    }
    assert {
        (b.source, b.destination, b.routing_key) for b in topology.bindings
    } <= bindings
    policies = {p["name"]: p for p in mgmt.policies(broker.vhost)}
    assert policies["orders-dlq-retention"]["definition"] == {
        "message-ttl": 14 * 86_400_000
    }


def test_reapply_is_a_no_op(broker: Broker) -> None:
    topology = for_vhost(load_topology(EXAMPLES), broker.vhost)
    first = apply_topology(broker, topology)

    again = plan_for(broker, topology)

    assert len(first) == 20  # 6 exchanges, 6 queues, 7 bindings, 1 policy
    assert not again.pending
    assert not again.blocking
    assert apply_topology(broker, topology) == []


def test_a_conflict_leaves_the_broker_untouched(
    broker: Broker, channel: pika.adapters.blocking_connection.BlockingChannel
) -> None:
    channel.queue_declare(
        "payments", durable=True
    )  # classic, as a Celery default would make it
    topology = loads(f"""
vhost: {broker.vhost}
exchanges: [{{name: shop, type: topic}}]
queues: [{{name: payments, delivery_limit: 5}}, {{name: audit, delivery_limit: 5}}]
bindings: [{{source: shop, destination: payments, routing_key: "pay.*"}}]
policies: [{{name: cap, pattern: "^audit$", definition: {{max-length: 5}}}}]
""")
    before = read_live_state(broker.management, broker.vhost)

    with pytest.raises(errors.TopologyConflict) as info:
        apply_topology(broker, topology)

    after = read_live_state(broker.management, broker.vhost)
    assert info.value.entity == "queue 'payments'"
    assert info.value.actual == {
        "arguments.x-queue-type": "classic",
        "arguments.x-delivery-limit": None,
    }
    assert {e["name"] for e in after.exchanges} == {e["name"] for e in before.exchanges}
    assert {q["name"] for q in after.queues} == {"payments"}
    assert after.bindings == before.bindings
    assert after.policies == []


def test_a_failure_mid_apply_reports_what_was_applied_and_a_rerun_converges(
    broker: Broker, channel: pika.adapters.blocking_connection.BlockingChannel
) -> None:
    topology = loads(f"""
vhost: {broker.vhost}
exchanges: [{{name: shop, type: topic}}]
queues: [{{name: payments, delivery_limit: 5}}]
""")
    stale = plan_for(broker, topology)
    # Someone declares the queue differently between plan and apply.
    channel.queue_declare("payments", durable=True)

    with pytest.raises(errors.ApplyIncomplete) as info:
        apply(stale, amqp_url=broker.amqp_url, management=broker.management)

    assert info.value.applied == ["created exchange shop"]
    assert info.value.reply_code == 406
    assert [c.name for c in plan_for(broker, topology).blocking] == ["payments"]


def test_prune_dry_run_lists_and_prune_deletes_unmanaged_objects(
    broker: Broker, channel: pika.adapters.blocking_connection.BlockingChannel
) -> None:
    topology = loads(
        f"vhost: {broker.vhost}\nqueues: [{{name: kept, delivery_limit: 5}}]\n"
    )
    channel.exchange_declare("legacy", exchange_type="direct", durable=True)
    channel.queue_declare(
        "legacy.q", durable=True, arguments={"x-queue-type": "quorum"}
    )
    channel.queue_bind("legacy.q", "legacy", "k")

    dry = plan_for(broker, topology)
    apply_topology(broker, topology)  # without prune: unmanaged objects stay
    still = {q["name"] for q in broker.management.queue_definitions(broker.vhost)}
    pruned = apply_topology(broker, topology, prune=True)

    assert [(c.kind, c.name) for c in prune_candidates(dry)] == [
        ("binding", "legacy -> legacy.q [k]"),
        ("queue", "legacy.q"),
        ("exchange", "legacy"),
    ]
    assert still == {"kept", "legacy.q"}
    assert pruned == [
        "deleted binding legacy -> legacy.q [k]",
        "deleted queue legacy.q",
        "deleted exchange legacy",
    ]
    assert {q["name"] for q in broker.management.queue_definitions(broker.vhost)} == {
        "kept"
    }
    assert "legacy" not in {
        e["name"] for e in broker.management.exchanges(broker.vhost)
    }


def wait_for_ready(
    channel: pika.adapters.blocking_connection.BlockingChannel, queue: str, count: int
) -> None:
    deadline = time.monotonic() + 10
    while channel.queue_declare(queue, passive=True).method.message_count < count:
        assert time.monotonic() < deadline, f"{queue} never held {count} messages"
        time.sleep(0.05)


def test_prune_keeps_a_quorum_queue_holding_messages_unless_forced(
    broker: Broker, channel: pika.adapters.blocking_connection.BlockingChannel
) -> None:
    topology = loads(f"vhost: {broker.vhost}\n")
    channel.queue_declare("orphan", durable=True, arguments={"x-queue-type": "quorum"})
    channel.confirm_delivery()
    for i in range(3):
        channel.basic_publish("", "orphan", f"m{i}".encode())
    wait_for_ready(channel, "orphan", 3)

    apply_topology(broker, topology, prune=True)
    kept = channel.queue_declare("orphan", passive=True).method.message_count
    forced = apply_topology(broker, topology, prune=True, force=True)

    assert kept == 3
    assert forced == ["deleted queue orphan"]
    assert "orphan" not in {
        q["name"] for q in broker.management.queue_definitions(broker.vhost)
    }


@pytest.fixture(name="second_vhost")
def _second_vhost(broker: Broker) -> Iterator[str]:
    vhost = f"reliable-test-{uuid.uuid4().hex[:10]}"
    broker.management.create_vhost(vhost)
    broker.management.grant_all(vhost, "guest")
    try:
        yield vhost
    finally:
        broker.management.delete_vhost(vhost)


def test_export_applied_to_an_empty_vhost_plans_no_changes(
    broker: Broker, second_vhost: str
) -> None:
    apply_topology(broker, for_vhost(load_topology(EXAMPLES), broker.vhost))
    exported, skipped = export_topology(
        read_live_state(broker.management, broker.vhost)
    )
    text = dump_topology(exported).replace(
        f"vhost: {broker.vhost}", f"vhost: {second_vhost}"
    )
    copy = loads(text)

    apply_topology(broker, copy)
    result = plan_for(broker, copy)
    original = plan_for(broker, for_vhost(load_topology(EXAMPLES), second_vhost))

    assert skipped == []
    assert result.pending == []
    assert result.blocking == []
    assert original.pending == []
    assert original.blocking == []


def test_apply_creates_a_missing_vhost(management_url: str, amqp_url: str) -> None:
    vhost = f"reliable-test-{uuid.uuid4().hex[:10]}"
    topology = loads(f"vhost: {vhost}\nqueues: [{{name: q, delivery_limit: 1}}]\n")
    with ManagementClient(management_url) as mgmt:
        try:
            p = plan(
                topology,
                read_live_state(mgmt, vhost),
                broker_version=mgmt.broker_version(),
            )
            report = apply(p, amqp_url=amqp_url, management=mgmt)

            assert report.applied[:2] == [f"created vhost {vhost!r}", "created queue q"]
            assert [q["name"] for q in mgmt.queue_definitions(vhost)] == ["q"]
        finally:
            mgmt.delete_vhost(vhost)


def test_amqp_declares_go_to_the_files_vhost(broker: Broker) -> None:
    topology = loads(
        f"vhost: {broker.vhost}\nqueues: [{{name: here, delivery_limit: 1}}]\n"
    )

    # The configured URL names the default vhost; apply must still declare in the file's.
    apply(
        plan_for(broker, topology),
        amqp_url=vhost_url(broker.amqp_url, "/"),
        management=broker.management,
    )

    assert [q["name"] for q in broker.management.queue_definitions(broker.vhost)] == [
        "here"
    ]


def test_version_rules_with_a_faked_version_gate_apply(broker: Broker) -> None:
    topology = loads(f"""
vhost: {broker.vhost}
queues: [{{name: q}}]
policies: [{{name: p, pattern: "^q$", apply_to: quorum_queues, definition: {{max-length: 5}}}}]
""")
    live = read_live_state(broker.management, broker.vhost)
    old = plan(topology, live, broker_version=(3, 10, 8))
    new = plan(topology, live, broker_version=(4, 1, 0))

    with pytest.raises(errors.TopologyError, match=r"needs RabbitMQ 3\.12"):
        apply(old, amqp_url=broker.amqp_url, management=broker.management)

    assert broker.management.queue_definitions(broker.vhost) == []
    assert [c.name for c in old.blocking] == ["p"]
    assert "redelivered forever" in old.warnings[0]
    assert new.blocking == []
    assert "default delivery limit of 20" in new.warnings[0]
