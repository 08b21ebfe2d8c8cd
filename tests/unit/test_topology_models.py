"""The topology models: units, broker rules, argument rendering."""

from __future__ import annotations

from datetime import timedelta

import pydantic
import pytest

from reliable.topology import Binding, Exchange, Policy, Queue, Topology
from reliable.topology_rules import format_duration, parse_duration, parse_size


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("500ms", 500),
        ("30s", 30_000),
        ("10m", 600_000),
        ("2h", 7_200_000),
        ("7d", 604_800_000),
        (1500, 1500),
        (0, 0),
    ],
    ids=["ms", "s", "m", "h", "d", "int", "zero"],
)
def test_durations_parse_to_milliseconds(text: object, ms: int) -> None:
    assert parse_duration(text) == timedelta(milliseconds=ms)


@pytest.mark.parametrize(
    "bad", ["10 minutes", "-5s", "5w", -1, True, 1.5, "", 2**40], ids=str
)
def test_bad_durations_are_refused(bad: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(bad)


@pytest.mark.parametrize(
    ("ms", "text"), [(600_000, "10m"), (1500, "1500ms"), (86_400_000, "1d"), (0, "0ms")]
)
def test_durations_format_to_the_shortest_exact_unit(ms: int, text: str) -> None:
    assert format_duration(timedelta(milliseconds=ms)) == text


@pytest.mark.parametrize(
    ("text", "size"),
    [("1GB", 10**9), ("512MiB", 512 * 2**20), ("1 KiB", 1024), (1000, 1000), ("5B", 5)],
    ids=["GB", "MiB", "space", "int", "bytes"],
)
def test_sizes_parse_to_bytes(text: object, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("bad", [0, -1, "0GB", "1XB", True, 1.5], ids=str)
def test_zero_negative_or_malformed_sizes_are_refused(bad: object) -> None:
    with pytest.raises(ValueError, match="size"):
        parse_size(bad)


def test_queue_renders_the_arguments_rabbitmq_expects() -> None:
    queue = Queue(
        name="orders",
        dead_letter={
            "exchange": "dlx",
            "routing_key": "orders",
            "strategy": "at-least-once",
        },
        overflow="reject-publish",
        delivery_limit=5,
        message_ttl="10m",
        expires="7d",
        max_length=100,
        max_length_bytes="1GB",
        single_active_consumer=True,
        arguments={"x-quorum-initial-group-size": 3},
    )

    assert queue.declare_arguments() == {
        "x-queue-type": "quorum",
        "x-dead-letter-exchange": "dlx",
        "x-dead-letter-routing-key": "orders",
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
        "x-delivery-limit": 5,
        "x-max-length": 100,
        "x-max-length-bytes": 10**9,
        "x-single-active-consumer": True,
        "x-message-ttl": 600_000,
        "x-expires": 604_800_000,
        "x-quorum-initial-group-size": 3,
    }


def test_stream_max_age_renders_in_rabbitmq_units() -> None:
    queue = Queue(name="audit", type="stream", max_age="7d", max_length_bytes="5GB")

    assert queue.declare_arguments() == {
        "x-queue-type": "stream",
        "x-max-age": "604800s",
        "x-max-length-bytes": 5 * 10**9,
    }


@pytest.mark.parametrize(
    ("fields", "fragment"),
    [
        ({"exclusive": True}, "cannot be exclusive"),
        ({"auto_delete": True}, "cannot be auto_delete"),
        ({"durable": False}, "cannot be durable: false"),
        ({"max_priority": 5}, "refuse max_priority"),
        ({"overflow": "reject-publish-dlx"}, "reject-publish-dlx"),
        (
            {"dead_letter": {"exchange": "dlx", "strategy": "at-least-once"}},
            "needs overflow: reject-publish",
        ),
        ({"arguments": {"x-max-priority": 5}}, "duplicates a typed field"),
        ({"arguments": {"x-queue-mode": "lazy"}}, "not valid for quorum queues"),
        (
            {"arguments": {"x-dead-letter-strateggy": "at-least-once"}},
            "did you mean 'x-dead-letter-strategy'",
        ),
        ({"arguments": {"x-foo": 1}}, "accept it silently"),
        ({"expires": 0}, "expires must be positive"),
        ({"max_length": 0}, "greater than or equal to 1"),
    ],
    ids=[
        "exclusive",
        "auto-delete",
        "non-durable",
        "priority",
        "reject-publish-dlx",
        "at-least-once",
        "typed-duplicate",
        "classic-only-arg",
        "typo",
        "unknown",
        "expires-0",
        "max-length-0",
    ],
)
def test_quorum_queue_rules(fields: dict[str, object], fragment: str) -> None:
    with pytest.raises(pydantic.ValidationError, match=fragment):
        Queue(name="q", type="quorum", **fields)


@pytest.mark.parametrize(
    ("fields", "fragment"),
    [
        ({"type": "classic", "delivery_limit": 3}, "quorum queues only"),
        (
            {
                "type": "classic",
                "dead_letter": {"exchange": "d", "strategy": "at-least-once"},
            },
            "quorum queues only",
        ),
        ({"type": "stream", "message_ttl": "1s"}, "streams do not support message_ttl"),
        ({"type": "stream", "exclusive": True}, "cannot be exclusive"),
        ({"type": "classic", "max_age": "1d"}, "streams only"),
        ({"name": "amq.mine"}, "reserves"),
        ({"dead_letter": {"exchange": ""}}, "needs a routing_key"),
    ],
    ids=[
        "classic-delivery-limit",
        "classic-strategy",
        "stream-ttl",
        "stream-exclusive",
        "classic-max-age",
        "amq",
        "default-dlx",
    ],
)
def test_other_queue_rules(fields: dict[str, object], fragment: str) -> None:
    data: dict[str, object] = {"name": "q", **fields}

    with pytest.raises(pydantic.ValidationError, match=fragment):
        Queue.model_validate(data)


def test_classic_priority_queue_is_accepted() -> None:
    queue = Queue(
        name="p", type="classic", max_priority=10, arguments={"x-queue-mode": "lazy"}
    )

    assert queue.declare_arguments()["x-max-priority"] == 10


def test_models_are_frozen_and_forbid_unknown_keys() -> None:
    queue = Queue(name="q")

    with pytest.raises(pydantic.ValidationError):
        queue.name = "other"  # type: ignore[misc]
    with pytest.raises(pydantic.ValidationError, match="dead_leter"):
        Queue.model_validate({"name": "q", "dead_leter": {}})


def test_exchange_arguments_are_checked_and_alternate_exchange_rendered() -> None:
    exchange = Exchange(name="e", type="topic", alternate_exchange="unrouted")

    assert exchange.declare_arguments() == {"alternate-exchange": "unrouted"}
    with pytest.raises(pydantic.ValidationError, match="did you mean 'fanout'"):
        Exchange(name="e", type="fanot")
    with pytest.raises(pydantic.ValidationError, match="alternate_exchange"):
        Exchange(name="e", arguments={"alternate-exchange": "x"})
    with pytest.raises(pydantic.ValidationError, match="x-delayed-type"):
        Exchange(name="e", arguments={"x-delayed-typ": "direct"})


def test_policy_definitions_accept_units_and_catch_typos() -> None:
    policy = Policy(
        name="p",
        pattern="^q$",
        definition={"message-ttl": "1h", "max-length-bytes": "1MiB"},
    )

    assert policy.definition == {"message-ttl": 3_600_000, "max-length-bytes": 2**20}
    with pytest.raises(pydantic.ValidationError, match="did you mean 'expires'"):
        Policy(name="p", pattern="^q$", definition={"expire": 5})
    with pytest.raises(pydantic.ValidationError, match="regular expression"):
        Policy(name="p", pattern="(", definition={"expires": 5})


def test_references_to_objects_declared_nowhere_are_problems() -> None:
    topology = Topology(
        exchanges=[Exchange(name="events", type="topic")],
        queues=[Queue(name="work", dead_letter={"exchange": "dlx"})],
        bindings=[
            Binding(source="event", destination="work"),
            Binding(source="events", destination="wrk"),
            Binding(source="amq.topic", destination="work"),
            Binding(
                source="events", destination="amq.fanout", destination_type="exchange"
            ),
        ],
    )

    problems = dict(topology.problems())

    assert set(problems) == {
        ("bindings", 0, "source"),
        ("bindings", 1, "destination"),
        ("queues", 0, "dead_letter", "exchange"),
    }
    assert "did you mean 'events'" in problems[("bindings", 0, "source")]


def test_duplicates_are_problems() -> None:
    topology = Topology(
        queues=[Queue(name="a"), Queue(name="a")],
        exchanges=[Exchange(name="e")],
        bindings=[
            Binding(source="e", destination="a"),
            Binding(source="e", destination="a"),
        ],
    )

    assert {loc for loc, _ in topology.problems()} == {
        ("queues", 1, "name"),
        ("bindings", 1),
    }


def test_json_schema_shows_the_duration_pattern() -> None:
    schema = Topology.model_json_schema()
    ttl = schema["$defs"]["Queue"]["properties"]["message_ttl"]

    patterns = [
        s.get("pattern")
        for branch in ttl["anyOf"]
        for s in branch.get("anyOf", [branch])
    ]
    assert any(p and "ms|s|m|h|d" in p for p in patterns)
