"""x-death parsing, origin lookup, replay headers and the typed JSON codec (no broker)."""

from __future__ import annotations

import decimal
import json
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reliable import amqp
from reliable.dlq_archive import decode_record, encode_record
from reliable.dlq_headers import (
    HISTORY,
    HISTORY_LIMIT,
    ORIGIN_QUEUE,
    REPLAY_COUNT,
    decode_value,
    encode_value,
    origin_of,
    parse_deaths,
    replay_headers,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
T1 = datetime(2026, 1, 2, tzinfo=UTC)


def death(queue, reason="rejected", count=1, time=T0, **extra):
    return {
        "queue": queue,
        "reason": reason,
        "count": count,
        "time": time,
        "exchange": "ex",
        "routing-keys": ["rk"],
        **extra,
    }


@pytest.mark.parametrize(
    "headers",
    [
        None,
        {},
        {"x-death": "garbage"},
        {"x-death": [1, "two", None]},
        {
            "x-death": [
                {
                    "queue": None,
                    "count": "lots",
                    "time": "yesterday",
                    "routing-keys": "rk",
                }
            ]
        },
    ],
    ids=["none", "empty", "string", "non-tables", "odd-fields"],
)
def test_truncated_or_odd_x_death_gives_an_unknown_origin_without_raising(
    headers,
) -> None:
    origin = origin_of(headers)

    assert origin.queue is None
    assert origin.source is None


def test_odd_types_inside_an_entry_are_read_leniently() -> None:
    [entry] = parse_deaths(
        {
            "x-death": [
                {
                    "queue": b"work",
                    "reason": b"expired",
                    "count": "3",
                    "time": 1767225600,
                    "exchange": b"",
                    "routing-keys": [b"a", "b", 7],
                }
            ]
        }
    )

    assert (entry.queue, entry.reason, entry.count) == ("work", "expired", 3)
    assert entry.time == T0
    assert entry.routing_keys == ("a", "b")


def test_origin_is_the_newest_entry_and_skips_celery_delay_queues_and_the_dlq() -> None:
    headers = {
        "x-death": [
            death("celery_delayed_0", "expired"),
            death("dlq", "expired"),
            death("tasks", "rejected", count=2, time=T1),
            death("celery_delayed_1", "expired"),
        ]
    }

    origin = origin_of(headers, dead_letter_queue="dlq")

    assert (origin.queue, origin.reason, origin.source) == (
        "tasks",
        "rejected",
        "x-death",
    )
    assert origin.death_count == 5
    assert (origin.first_death, origin.last_death) == (T0, T1)


def test_recorded_origin_is_used_when_x_death_is_gone() -> None:
    origin = origin_of({ORIGIN_QUEUE: "orders", REPLAY_COUNT: 2})

    assert (origin.queue, origin.source) == ("orders", "x-reliable-origin-queue")


def test_replay_headers_move_broker_headers_into_history_and_count() -> None:
    headers = {
        "x-death": [death("work")],
        "x-first-death-queue": "work",
        "x-first-death-reason": "rejected",
        "x-last-death-queue": "work",
        "x-delivery-count": 3,
        "id": "task-1",
        "custom": b"\x00",
        REPLAY_COUNT: 1,
    }

    new = replay_headers(headers, origin_queue="work", replayed_at=T1)

    assert new["id"] == "task-1"
    assert new["custom"] == b"\x00"
    assert new[REPLAY_COUNT] == 2
    assert new[ORIGIN_QUEUE] == "work"
    assert not any(
        k.startswith(("x-death", "x-first-death", "x-last-death")) for k in new
    )
    assert "x-delivery-count" not in new
    assert new[HISTORY][0]["x-first-death-queue"] == "work"
    assert new[HISTORY][0]["replayed-at"] == T1


def test_history_is_bounded_and_newest_first() -> None:
    headers: dict = {}
    for n in range(HISTORY_LIMIT + 3):
        headers["x-death"] = [death(f"q{n}")]
        headers = replay_headers(headers, origin_queue="q0", replayed_at=T0)

    assert len(headers[HISTORY]) == HISTORY_LIMIT
    assert headers[HISTORY][0]["x-death"][0]["queue"] == f"q{HISTORY_LIMIT + 2}"
    assert headers[ORIGIN_QUEUE] == "q0"
    assert headers[REPLAY_COUNT] == HISTORY_LIMIT + 3


values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.text()
    | st.binary()
    | st.decimals(allow_nan=False, allow_infinity=False, places=3)
    | st.datetimes(
        min_value=datetime(1971, 1, 1),
        max_value=datetime(2100, 1, 1),
        timezones=st.just(UTC),
    ).map(lambda d: d.replace(microsecond=0)),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=5), inner, max_size=4)
    ),
    max_leaves=12,
)


@given(values)
def test_typed_values_survive_json(value) -> None:
    back = decode_value(json.loads(json.dumps(encode_value(value))))

    assert back == value
    assert type(back) is type(value)


def test_pika_long_keeps_its_type() -> None:
    value = amqp.long_int(5)

    back = decode_value(json.loads(json.dumps(encode_value(value))))

    assert type(back) is type(value)
    assert back == 5


@pytest.mark.parametrize(
    "data",
    [{"t": "nope"}, {"v": 1}, {"t": "bytes", "v": "!!"}, {"t": "decimal", "v": "x"}, 5],
    ids=["type", "no-type", "base64", "decimal", "scalar"],
)
def test_bad_typed_values_raise_value_error(data) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - the message names the value
        decode_value(data)


def test_export_record_round_trips_properties_headers_and_body() -> None:
    message = amqp.IncomingMessage(
        delivery_tag=7,
        redelivered=True,
        exchange="dlx",
        routing_key="work",
        body=b"\xff\x00binary",
        properties=amqp.Properties(
            content_type="application/octet-stream",
            message_id="m",
            correlation_id="c",
            timestamp=1700000000,
            priority=3,
            delivery_mode=2,
            headers={"n": decimal.Decimal("1.25"), "x-death": [death("work")]},
        ),
    )

    back = decode_record(
        json.loads(json.dumps(encode_record(message, queue="dlq"))), tag=7
    )

    assert back == message


def test_a_record_of_another_format_is_refused() -> None:
    with pytest.raises(ValueError, match="not a reliable-dlq/1 record"):
        decode_record({"format": "other"})
