"""plan(): a pure diff of a topology against recorded live state."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from reliable import errors
from reliable.declare import Change, LiveState, Plan, plan
from reliable.topology import Binding, Queue, Topology
from reliable.topology_file import dump_topology, load_topology, loads

EXAMPLES = Path(__file__).parents[2] / "topology"

TOPOLOGY = loads("""
exchanges: [{name: events, type: topic}]
queues:
  - {name: work, delivery_limit: 5, message_ttl: 10m}
  - {name: other, delivery_limit: 5}
bindings: [{source: events, destination: work, routing_key: "a.*"}]
policies: [{name: cap, pattern: "^work$", apply_to: queues, definition: {max-length: 10}}]
""")
V3 = (3, 10, 8)


def live_queue(name: str, args: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "type": args.get("x-queue-type", "classic"),
        "durable": True,
        "exclusive": False,
        "auto_delete": False,
        "arguments": args,
        **extra,
    }


def in_sync(**overrides: Any) -> LiveState:
    """Live state exactly as apply would leave it."""
    data: dict[str, Any] = {
        "vhost": "/",
        "exchanges": [
            {"name": "", "type": "direct", "durable": True},
            {"name": "amq.topic", "type": "topic", "durable": True},
            {
                "name": "events",
                "type": "topic",
                "durable": True,
                "auto_delete": False,
                "internal": False,
                "arguments": {},
            },
        ],
        "queues": [
            live_queue(
                "work",
                {
                    "x-queue-type": "quorum",
                    "x-delivery-limit": 5,
                    "x-message-ttl": 600000,
                },
            ),
            live_queue("other", {"x-queue-type": "quorum", "x-delivery-limit": 5}),
        ],
        "bindings": [
            {
                "source": "",
                "destination": "work",
                "destination_type": "queue",
                "routing_key": "work",
                "arguments": {},
            },
            {
                "source": "events",
                "destination": "work",
                "destination_type": "queue",
                "routing_key": "a.*",
                "arguments": {},
            },
        ],
        "policies": [
            {
                "name": "cap",
                "pattern": "^work$",
                "apply-to": "queues",
                "priority": 0,
                "definition": {"max-length": 10},
            }
        ],
    }
    data.update(overrides)
    return LiveState(**data)


def actions(p: Plan) -> dict[tuple[str, str], str]:
    return {(c.kind, c.name): c.action for c in p.changes}


def change(p: Plan, kind: str, name: str) -> Change:
    return next(c for c in p.changes if c.kind == kind and c.name == name)


def test_everything_is_created_in_an_empty_vhost() -> None:
    result = plan(TOPOLOGY, LiveState(vhost="/", exists=False), broker_version=V3)

    assert [(c.kind, c.action) for c in result.changes] == [
        ("vhost", "create"),
        ("exchange", "create"),
        ("queue", "create"),
        ("queue", "create"),
        ("binding", "create"),
        ("policy", "create"),
    ]


def test_a_broker_in_sync_needs_no_changes() -> None:
    result = plan(TOPOLOGY, in_sync(), broker_version=V3)

    assert set(actions(result).values()) == {"unchanged"}
    assert not result.pending
    assert not result.blocking


def test_a_changed_queue_argument_is_a_conflict_with_a_way_out() -> None:
    live = in_sync(
        queues=[
            live_queue(
                "work",
                {
                    "x-queue-type": "quorum",
                    "x-delivery-limit": 3,
                    "x-message-ttl": 600000,
                },
            ),
            live_queue("other", {"x-queue-type": "quorum", "x-delivery-limit": 5}),
        ]
    )

    result = plan(TOPOLOGY, live, broker_version=V3)
    work = change(result, "queue", "work")

    assert work.action == "conflict"
    assert work.expected == {"arguments.x-delivery-limit": 5}
    assert work.actual == {"arguments.x-delivery-limit": 3}
    assert "reliable dlq move work work.v2" in work.remedy
    assert result.blocking == [work]


def test_a_classic_queue_where_quorum_is_wanted_is_a_conflict() -> None:
    live = in_sync(
        queues=[
            live_queue("work", {}),
            live_queue("other", {"x-queue-type": "quorum", "x-delivery-limit": 5}),
        ]
    )

    work = change(plan(TOPOLOGY, live, broker_version=V3), "queue", "work")

    assert work.action == "conflict"
    assert work.actual["arguments.x-queue-type"] == "classic"


def test_an_argument_missing_on_the_broker_suggests_a_policy() -> None:
    live = in_sync(
        queues=[
            live_queue("work", {"x-queue-type": "quorum", "x-delivery-limit": 5}),
            live_queue("other", {"x-queue-type": "quorum", "x-delivery-limit": 5}),
        ]
    )

    work = change(plan(TOPOLOGY, live, broker_version=V3), "queue", "work")

    assert work.action == "conflict"
    assert "set message-ttl with a policy" in work.remedy


def test_a_changed_policy_is_updated_in_place() -> None:
    live = in_sync(
        policies=[
            {
                "name": "cap",
                "pattern": "^work$",
                "apply-to": "queues",
                "priority": 0,
                "definition": {"max-length": 99},
            }
        ]
    )

    cap = change(plan(TOPOLOGY, live, broker_version=V3), "policy", "cap")

    assert cap.action == "update"
    assert (cap.actual, cap.expected) == (
        {"definition.max-length": 99},
        {"definition.max-length": 10},
    )


def test_a_changed_exchange_type_is_a_conflict() -> None:
    live = in_sync(exchanges=[{"name": "events", "type": "direct", "durable": True}])

    events = change(plan(TOPOLOGY, live, broker_version=V3), "exchange", "events")

    assert events.action == "conflict"
    assert events.expected == {"type": "topic"}


def test_unmanaged_objects_are_listed_but_builtins_celery_and_client_queues_are_not() -> (
    None
):
    live = in_sync(
        exchanges=[
            *in_sync().exchanges,
            {"name": "legacy", "type": "direct"},
            {"name": "celery", "type": "direct"},
            {"name": "celery_delayed_27", "type": "topic"},
            {"name": "amq.direct", "type": "direct"},
        ],
        queues=[
            *in_sync().queues,
            live_queue("old", {}, messages=4),
            live_queue("celery", {}),
            live_queue("celery_delayed_3", {"x-queue-type": "quorum"}),
            live_queue("amq.gen-1", {}, exclusive=True),
            live_queue("w1@host.celery.pidbox", {}, auto_delete=True),
        ],
        bindings=[
            *in_sync().bindings,
            {
                "source": "legacy",
                "destination": "old",
                "destination_type": "queue",
                "routing_key": "x",
                "arguments": {},
            },
            {
                "source": "celery",
                "destination": "celery",
                "destination_type": "queue",
                "routing_key": "celery",
                "arguments": {},
            },
            {
                "source": "celery_delayed_delivery",
                "destination": "work",
                "destination_type": "queue",
                "routing_key": "#.work",
                "arguments": {},
            },
        ],
    )

    result = plan(TOPOLOGY, live, broker_version=V3)

    assert [(c.kind, c.name) for c in result.by_action("unmanaged")] == [
        ("exchange", "legacy"),
        ("queue", "old"),
        ("binding", "legacy -> old [x]"),
    ]
    assert change(result, "queue", "old").actual["messages"] == 4


def test_a_celery_name_declared_in_the_file_is_managed() -> None:
    topology = loads("queues: [{name: celery, delivery_limit: 5}]")

    result = plan(
        topology,
        LiveState(vhost="/", queues=[live_queue("celery", {})]),
        broker_version=V3,
    )

    assert actions(result) == {("queue", "celery"): "conflict"}


def test_quorum_queue_without_delivery_limit_warns_on_3x_that_failures_loop_forever() -> (
    None
):
    topology = loads("queues: [{name: q}]")

    q = change(plan(topology, LiveState(vhost="/"), broker_version=V3), "queue", "q")

    assert q.action == "create"
    assert "redelivered forever" in q.warnings[0]


def test_quorum_queue_without_delivery_limit_warns_on_4x_about_the_default_of_20() -> (
    None
):
    topology = loads("queues: [{name: q}]")

    q = change(
        plan(topology, LiveState(vhost="/"), broker_version=(4, 1, 0)), "queue", "q"
    )

    assert "default delivery limit of 20" in q.warnings[0]
    assert "DROPPED" in q.warnings[0]


@pytest.mark.parametrize(
    ("text", "version", "fragment"),
    [
        (
            "queues: [{name: q, message_ttl: 1s, delivery_limit: 1}]",
            (3, 9, 29),
            "message_ttl from 3.10",
        ),
        ("queues: [{name: q, type: stream}]", (3, 8, 0), "streams need RabbitMQ 3.9+"),
        ("queues: [{name: q, delivery_limit: -1}]", V3, "needs RabbitMQ 4.0+"),
        (
            "queues: [{name: q, delivery_limit: 1, arguments: {x-delayed-retry-type: all}}]",
            (4, 2, 0),
            "needs RabbitMQ 4.3+",
        ),
        (
            "policies: [{name: p, pattern: x, apply_to: quorum_queues, definition: {max-length: 1}}]",
            V3,
            "needs RabbitMQ 3.12+",
        ),
        (
            "policies: [{name: p, pattern: x, definition: {ha-mode: all}}]",
            (4, 0, 1),
            "removed in RabbitMQ 4.0",
        ),
    ],
    ids=[
        "qq-ttl-3.9",
        "stream-3.8",
        "unlimited-3.10",
        "delayed-retry-4.2",
        "apply-to-3.10",
        "mirroring-4.0",
    ],
)
def test_features_the_broker_version_lacks_are_unsupported(
    text: str, version: tuple[int, int, int], fragment: str
) -> None:
    result = plan(loads(text), LiveState(vhost="/"), broker_version=version)

    (blocked,) = result.blocking
    assert blocked.action == "unsupported"
    assert fragment in blocked.reason


def test_effective_settings_show_policy_and_operator_policy() -> None:
    live = in_sync(
        operator_policies=[
            {
                "name": "ops",
                "pattern": ".*",
                "apply-to": "queues",
                "priority": 0,
                "definition": {"message-ttl": 60000, "max-length": 100},
            }
        ]
    )

    work = change(plan(TOPOLOGY, live, broker_version=V3), "queue", "work")

    assert work.effective == {
        "max-length": {"file": None, "effective": 10, "source": "policy 'cap'"},
        "message-ttl": {
            "file": 600000,
            "effective": 60000,
            "source": "operator policy 'ops'",
        },
    }


def test_quorum_policy_overflow_beats_the_argument() -> None:
    topology = loads("""
queues: [{name: q, overflow: reject-publish, delivery_limit: 1}]
policies: [{name: p, pattern: "^q$", definition: {overflow: drop-head}}]
""")

    q = change(plan(topology, LiveState(vhost="/"), broker_version=V3), "queue", "q")

    assert q.effective == {
        "overflow": {
            "file": "reject-publish",
            "effective": "drop-head",
            "source": "policy 'p'",
        }
    }


def test_plan_serialises_to_json_data() -> None:
    data = plan(
        TOPOLOGY, LiveState(vhost="/", exists=False), broker_version=V3
    ).to_dict()

    assert data["summary"]["create"] == 6
    assert data["broker_version"] == "3.10.8"
    assert all({"kind", "name", "action"} <= set(c) for c in data["changes"])


def test_a_topology_built_in_code_with_a_dangling_binding_is_refused() -> None:
    topology = Topology(
        queues=[Queue(name="w")], bindings=[Binding(source="nowhere", destination="w")]
    )

    with pytest.raises(
        errors.TopologyError,
        match=r"bindings\[0\]\.source: exchange 'nowhere' is declared nowhere",
    ):
        plan(topology, LiveState(vhost="/"), broker_version=V3)


def recorded() -> LiveState:
    """What the management API of RabbitMQ 3.10.8 returned after applying topology/."""
    data = json.loads(
        (Path(__file__).parent / "data" / "live_examples_3.10.8.json").read_text()
    )
    return LiveState(vhost="/", **data)


def test_the_examples_against_recorded_3_10_8_state_plan_no_changes() -> None:
    result = plan(load_topology(EXAMPLES), recorded(), broker_version=V3)

    assert result.summary() == {
        "create": 0,
        "update": 0,
        "unchanged": 20,
        "conflict": 0,
        "unsupported": 0,
        "unmanaged": 0,
    }


def test_recorded_state_with_a_changed_file_gives_conflict_update_and_unmanaged() -> (
    None
):
    text = dump_topology(load_topology(EXAMPLES))
    text = text.replace("max_length: 100000", "max_length: 5")
    text = text.replace("message-ttl: 1209600000", "message-ttl: 1000")
    changed = loads(text)
    changed = changed.model_copy(
        update={
            "queues": [q for q in changed.queues if q.name != "audit.log"],
            "bindings": [b for b in changed.bindings if b.destination != "audit.log"],
        }
    )

    result = plan(changed, recorded(), broker_version=V3)

    assert {
        (c.kind, c.name): c.action for c in result.changes if c.action != "unchanged"
    } == {
        ("queue", "orders.work"): "conflict",
        ("policy", "orders-dlq-retention"): "update",
        ("queue", "audit.log"): "unmanaged",
        ("binding", "audit -> audit.log []"): "unmanaged",
    }
