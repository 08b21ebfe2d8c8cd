"""Filters, durations, the token bucket and DLQ discovery (no broker)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from reliable import amqp
from reliable.dlq_discovery import delivery_limit, discover
from reliable.dlq_filters import (
    DeadLetter,
    Filter,
    exception_matches,
    parse_header_filter,
)
from reliable.dlq_replay import TokenBucket, batch_size_for
from reliable.durations import parse_duration

NOW = datetime(2026, 1, 10, tzinfo=UTC)


def letter(
    *,
    queue="work",
    reason="rejected",
    age=60.0,
    headers=None,
    message_id=None,
    correlation_id=None,
):
    x_death = [
        {
            "queue": queue,
            "reason": reason,
            "count": 1,
            "time": NOW - timedelta(seconds=age),
        }
    ]
    props = amqp.Properties(
        headers={"x-death": x_death, **(headers or {})},
        message_id=message_id,
        correlation_id=correlation_id,
    )
    msg = amqp.IncomingMessage(
        delivery_tag=1,
        redelivered=False,
        exchange="dlx",
        routing_key="k",
        body=b"{}",
        properties=props,
    )
    return DeadLetter.from_message(msg)


@pytest.mark.parametrize(
    ("flt", "selected"),
    [
        (Filter(), True),
        (Filter(source_queues=("work", "x")), True),
        (Filter(source_queues=("other",)), False),
        (Filter(reasons=("expired",)), False),
        (Filter(older_than_seconds=30), True),
        (Filter(older_than_seconds=120), False),
        (Filter(newer_than_seconds=120), True),
        (Filter(newer_than_seconds=30), False),
        (Filter(headers=(("tenant", "acme"),)), True),
        (Filter(headers=(("tenant", "other"),)), False),
        (Filter(headers=(("missing", ""),)), False),
        (Filter(tasks=("app.add",)), True),
        (Filter(message_ids=("task-1",)), True),
        (Filter(message_ids=("corr",)), True),
        (Filter(exceptions=("KeyError",)), False),
    ],
    ids=[
        "all",
        "source",
        "source-miss",
        "reason-miss",
        "older",
        "older-miss",
        "newer",
        "newer-miss",
        "header",
        "header-miss",
        "header-absent",
        "task",
        "task-id",
        "correlation",
        "exception-without-records",
    ],
)
def test_filter_selects_by_each_criterion(flt, selected) -> None:
    dead = letter(
        headers={"tenant": b"acme", "task": "app.add", "id": "task-1"},
        correlation_id="corr",
    )

    assert flt.matches(dead, NOW) is selected


def test_exception_filter_uses_the_attached_failure_record() -> None:
    dead = letter()
    dead.exception_type = "KeyError"

    assert Filter(exceptions=("KeyError",)).matches(dead, NOW)


def test_age_filters_skip_messages_without_any_time() -> None:
    msg = amqp.IncomingMessage(
        delivery_tag=1,
        redelivered=False,
        exchange="",
        routing_key="q",
        body=b"",
        properties=amqp.Properties(),
    )

    assert not Filter(older_than_seconds=1).matches(DeadLetter.from_message(msg), NOW)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90", 90),
        ("30s", 30),
        ("5m", 300),
        ("2h", 7200),
        ("1.5d", 129600),
        ("1w", 604800),
    ],
)
def test_durations(text, seconds) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["", "soon", "5y", "-1m"])
def test_bad_durations_are_refused(bad) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(bad)


def test_header_filter_parsing() -> None:
    assert parse_header_filter("k=v=w") == ("k", "v=w")
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_header_filter("novalue")


def test_unknown_reason_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown reason 'nope'"):
        Filter(reasons=("nope",))


def test_filter_json_lists_only_what_was_set() -> None:
    assert Filter(reasons=("expired",), limit=3).to_json() == {
        "reason": ["expired"],
        "limit": 3,
    }


def test_token_bucket_paces_to_the_rate() -> None:
    now = [0.0]
    bucket = TokenBucket(100, burst=10, clock=lambda: now[0])
    sent = 0
    while now[0] < 10:
        wait = bucket.wait_seconds(10)
        if wait:
            now[0] += wait
            continue
        bucket.take(10)
        sent += 10

    assert 990 <= sent <= 1010
    assert batch_size_for(100, 500) == 20
    assert batch_size_for(None, 500) == 500


QUEUES = [
    {"name": "work", "type": "classic", "arguments": {"x-dead-letter-exchange": "dlx"}},
    {
        "name": "orders",
        "type": "quorum",
        "arguments": {},
        "effective_policy_definition": {"dead-letter-exchange": "dlx"},
    },
    {
        "name": "direct",
        "type": "classic",
        "arguments": {
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": "direct.dlq",
        },
    },
    {"name": "dlq", "type": "quorum", "arguments": {"x-delivery-limit": 3}},
    {"name": "direct.dlq", "type": "classic", "arguments": {}},
    {"name": "plain", "type": "classic", "arguments": {}},
]
BINDINGS = [
    {"source": "dlx", "destination": "dlq", "destination_type": "queue"},
    {"source": "other", "destination": "plain", "destination_type": "queue"},
]


def test_dead_letter_queues_are_found_from_arguments_policies_and_the_default_exchange() -> (
    None
):
    found = {d.name: d for d in discover(QUEUES, BINDINGS)}

    assert set(found) == {"dlq", "direct.dlq"}
    assert found["dlq"].sources == ["orders", "work"]
    assert found["dlq"].delivery_limit == 3
    assert found["direct.dlq"].sources == ["direct"]


@pytest.mark.parametrize(
    ("queue", "version", "limit"),
    [
        ({"type": "quorum", "arguments": {}}, (3, 10, 8), None),
        ({"type": "quorum", "arguments": {}}, (4, 0, 1), 20),
        ({"type": "quorum", "arguments": {"x-delivery-limit": -1}}, (4, 1, 0), None),
        (
            {
                "type": "quorum",
                "arguments": {"x-delivery-limit": 9},
                "effective_policy_definition": {"delivery-limit": 4},
            },
            (3, 13, 0),
            4,
        ),
        ({"type": "classic", "arguments": {"x-delivery-limit": 2}}, (4, 0, 0), None),
    ],
    ids=[
        "3.10-none",
        "4.0-default",
        "4.x-disabled",
        "min-of-arg-and-policy",
        "classic",
    ],
)
def test_delivery_limit_by_version(queue, version, limit) -> None:
    assert delivery_limit(queue, broker_version=version) == limit


@pytest.mark.parametrize(
    ("recorded", "wanted", "expected"),
    [
        ("shop.PaymentDeclined", "PaymentDeclined", True),
        ("shop.PaymentDeclined", "shop.PaymentDeclined", True),
        ("shop.PaymentDeclined", "other.PaymentDeclined", False),
        ("shop.PaymentDeclinedLater", "PaymentDeclined", False),
        (None, "PaymentDeclined", False),
    ],
    ids=["class-name", "qualified", "other-module", "prefix-only", "no-record"],
)
def test_exception_filter_accepts_the_class_name_of_a_qualified_record(
    recorded: str | None, wanted: str, expected: bool
) -> None:
    assert exception_matches(recorded, (wanted,)) is expected
