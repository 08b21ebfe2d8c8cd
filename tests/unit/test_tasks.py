"""Unit tests of the Celery integration that need no broker, database or worker."""

from __future__ import annotations

import inspect
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from celery import Celery, chain, group
from celery.schedules import crontab, schedule

from reliable import Reliable, errors, task_support, tasks
from reliable.inbox import encode_result
from reliable.taskrun import TaskSpec

# An unreachable broker: capturing must never open a connection (the unit
# tier's socket guard would fail the test anyway).
BROKER = "amqp://guest:guest@127.0.0.1:1/%2F"


@pytest.fixture(name="rel")
def _rel() -> Reliable:
    app = Celery("unit", broker=BROKER)
    app.conf.task_routes = {"unit.routed": {"queue": "special"}}
    return Reliable(celery_app=app, database_url="postgresql://unused")


def test_decorated_task_is_a_celery_task_with_the_required_settings(
    rel: Reliable,
) -> None:
    @rel.task(name="unit.charge", queue="payments", max_retries=5, retry_backoff=True)
    def charge(conn: Any, order_id: int) -> int:
        return order_id

    assert isinstance(charge, tasks.ReliableTask)
    assert (charge.name, charge.max_retries, charge.retry_backoff) == (
        "unit.charge",
        5,
        True,
    )
    assert {
        k: getattr(charge, k) for k in tasks.REQUIRED_TASK_SETTINGS
    } == tasks.REQUIRED_TASK_SETTINGS
    assert charge.reliable_spec.consumer == "unit.charge"


def test_consumer_name_can_be_set(rel: Reliable) -> None:
    @rel.task(name="unit.a", consumer="billing")
    def a(conn: Any) -> None:
        return None

    assert a.reliable_spec.consumer == "billing"


def test_callers_see_the_body_signature_without_the_connection(rel: Reliable) -> None:
    @rel.task(name="unit.charge")
    def charge(conn: Any, order_id: int, amount: int = 1) -> int:
        return order_id

    with pytest.raises(TypeError):
        charge.s(1, 2, 3).apply_async()  # typing check fails before any publish


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("acks_late", False),
        ("reject_on_worker_lost", False),
        ("acks_on_failure_or_timeout", True),
    ],
    ids=["acks_late", "reject_on_worker_lost", "acks_on_failure_or_timeout"],
)
def test_contradicting_task_options_are_refused(
    rel: Reliable, option: str, value: bool
) -> None:
    with pytest.raises(ValueError, match=option):
        rel.task(name="unit.x", **{option: value})(lambda conn: None)


def test_body_without_a_connection_parameter_is_refused(rel: Reliable) -> None:
    def no_params() -> None:
        return None

    with pytest.raises(TypeError, match="connection"):
        rel.task(name="unit.none")(no_params)


def test_bound_body_takes_task_then_connection(rel: Reliable) -> None:
    @rel.task(name="unit.bound", bind=True)
    def bound(self: Any, conn: Any, x: int) -> int:
        return x

    task_class = type(bound._get_current_object())

    assert list(inspect.signature(task_class.run).parameters) == ["self", "x"]


def test_rel_task_without_celery_app_is_a_config_error() -> None:
    rel = Reliable(database_url="postgresql://unused")

    with pytest.raises(errors.ConfigError):
        rel.task(lambda conn: None)


def test_message_key_is_the_task_id_or_the_business_key() -> None:
    plain = TaskSpec(consumer="c")
    keyed = TaskSpec(consumer="c", dedupe_key=lambda event_id, payload: event_id)

    assert plain.message_key("tid", (1,), {}) == "tid"
    assert keyed.message_key("tid", ("evt-7", {}), {}) == "evt-7"
    assert keyed.message_key("tid", (), {"event_id": 9, "payload": None}) == "9"


def test_empty_business_key_is_refused() -> None:
    keyed = TaskSpec(consumer="c", dedupe_key=lambda x: "")

    with pytest.raises(ValueError, match="dedupe_key"):
        keyed.message_key("tid", ("a",), {})


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"a": 1}, {"a": 1}),
        ("x" * 100, "x" * 100),
        (object(), None),
        ("x" * 70_000, None),
        (None, None),
    ],
    ids=["dict", "string", "not-json", "too-large", "none"],
)
def test_results_are_stored_only_as_small_json(value: Any, expected: Any) -> None:
    assert encode_result(value, max_bytes=64 * 1024) == expected


# -- enqueue: Celery's own message ----------------------------------------------------


def test_captured_message_is_celery_protocol_2_with_the_fixed_task_id(
    rel: Reliable,
) -> None:
    @rel.celery_app.task(name="unit.add")
    def add(x: int, y: int) -> int:
        return x + y

    result_id, (captured,) = tasks.capture(add.s(1, 2).set(priority=3), task_id="tid-1")
    message = tasks.outbox_message(captured)

    assert result_id == "tid-1"
    assert message.message_id == "tid-1"
    assert (message.exchange, message.routing_key) == ("", "celery")
    assert json.loads(message.body) == [
        [1, 2],
        {},
        {"callbacks": None, "errbacks": None, "chain": None, "chord": None},
    ]
    headers = message.properties["headers"]
    assert (headers["id"], headers["task"], headers["root_id"], headers["retries"]) == (
        "tid-1",
        "unit.add",
        "tid-1",
        0,
    )
    assert message.properties["correlation_id"] == "tid-1"
    assert (message.properties["priority"], message.properties["delivery_mode"]) == (
        3,
        2,
    )
    assert message.properties["content_type"] == "application/json"
    assert message.delay_seconds == 0.0


def test_task_routes_pick_the_queue(rel: Reliable) -> None:
    @rel.celery_app.task(name="unit.routed")
    def routed() -> None:
        return None

    _id, (captured,) = tasks.capture(routed.s())

    assert tasks.outbox_message(captured).routing_key == "special"


def test_set_queue_and_exchange_override_routing(rel: Reliable) -> None:
    @rel.celery_app.task(name="unit.t")
    def t() -> None:
        return None

    _id, (captured,) = tasks.capture(
        t.s().set(exchange="shop", routing_key="orders.paid")
    )
    message = tasks.outbox_message(captured)

    assert (message.exchange, message.routing_key) == ("shop", "orders.paid")


def test_countdown_becomes_the_row_delay_and_keeps_the_eta_header(
    rel: Reliable,
) -> None:
    @rel.celery_app.task(name="unit.t")
    def t() -> None:
        return None

    _id, (captured,) = tasks.capture(t.s().set(countdown=30))
    now = datetime.now(UTC)
    message = tasks.outbox_message(captured, now=now)

    eta = datetime.fromisoformat(message.properties["headers"]["eta"])
    assert 29 < message.delay_seconds <= 30
    assert timedelta(seconds=29) < eta - now <= timedelta(seconds=30)


def test_native_delayed_delivery_leaves_the_delay_to_the_broker() -> None:
    assert (
        task_support._row_delay(
            task_support.NATIVE_DELAY_EXCHANGE, "2999-01-01T00:00:00+00:00", now=None
        )
        == 0.0
    )
    assert task_support._row_delay("", "2999-01-01T00:00:00+00:00", now=None) > 0


def test_chain_stores_its_first_task_and_returns_the_chain_result_id(
    rel: Reliable,
) -> None:
    @rel.celery_app.task(name="unit.t")
    def t(x: int) -> int:
        return x

    result_id, messages = tasks.capture(chain(t.s(1), t.s()))

    assert len(messages) == 1
    body = json.loads(tasks.outbox_message(messages[0]).body)
    assert body[2]["chain"][0]["task"] == "unit.t"
    assert body[2]["chain"][0]["options"]["task_id"] == result_id


def test_group_stores_one_message_per_task(rel: Reliable) -> None:
    @rel.celery_app.task(name="unit.t")
    def t(x: int) -> int:
        return x

    _id, messages = tasks.capture(group(t.s(1), t.s(2), t.s(3)))

    assert len({tasks.outbox_message(m).message_id for m in messages}) == 3


def test_enqueue_refuses_eager_mode(rel: Reliable) -> None:
    rel.celery_app.conf.task_always_eager = True

    @rel.celery_app.task(name="unit.t")
    def t() -> None:
        return None

    with pytest.raises(errors.ConfigError):
        tasks.capture(t.s())


# -- settings check -----------------------------------------------------------------------


def test_startup_check_names_eager_mode_overrides_and_missing_confirms(
    rel: Reliable,
) -> None:
    @rel.task(name="unit.t")
    def t(conn: Any) -> None:
        return None

    t.acks_late = False  # what a task_annotations entry would do
    rel.celery_app.conf.task_always_eager = True

    problems = tasks.check_settings(rel.celery_app, [t])

    assert [p.split(" ")[0] for p in problems] == [
        "task_always_eager=True",
        "task",
        "broker_transport_options",
    ]


def test_startup_check_is_quiet_for_a_good_configuration(rel: Reliable) -> None:
    rel.celery_app.conf.broker_transport_options = {"confirm_publish": True}

    @rel.task(name="unit.t")
    def t(conn: Any) -> None:
        return None

    assert tasks.check_settings(rel.celery_app, [t]) == []


# -- beat -------------------------------------------------------------------------


def test_beat_task_id_is_the_same_within_a_slot_and_differs_across_slots() -> None:
    base = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)

    same = {
        tasks.beat_task_id("tick", base + timedelta(seconds=s), 10)
        for s in (0, 3.5, 9.9)
    }
    other = tasks.beat_task_id("tick", base + timedelta(seconds=10), 10)
    other_entry = tasks.beat_task_id("tock", base, 10)

    assert len(same) == 1
    assert other not in same
    assert other_entry not in same


@pytest.mark.parametrize(
    ("sched", "expected"),
    [
        (schedule(timedelta(seconds=30)), 30.0),
        (crontab(minute="*/5"), 60.0),
        (schedule(timedelta(seconds=0.2)), 1.0),
    ],
    ids=["interval", "crontab", "sub-second"],
)
def test_slot_width_follows_the_schedule(sched: Any, expected: float) -> None:
    assert tasks.slot_seconds(sched) == expected


def test_native_delayed_delivery_route_is_stored_with_no_row_delay() -> None:
    from kombu import Exchange, Queue

    app = Celery("unit-native", broker=BROKER)
    app.conf.task_queues = [
        Queue(
            "q",
            Exchange("events", type="topic"),
            routing_key="q",
            queue_arguments={"x-queue-type": "quorum"},
        )
    ]
    app.conf.task_default_queue = "q"

    @app.task(name="unit.t")
    def t() -> None:
        return None

    _id, (captured,) = tasks.capture(t.s().set(countdown=10))
    message = tasks.outbox_message(captured)

    assert message.exchange == task_support.NATIVE_DELAY_EXCHANGE
    assert message.routing_key.endswith(".q")
    assert message.delay_seconds == 0.0
    assert "eta" in message.properties["headers"]


def test_eta_becomes_the_row_delay(rel: Reliable) -> None:
    @rel.celery_app.task(name="unit.t")
    def t() -> None:
        return None

    now = datetime.now(UTC)
    _id, (captured,) = tasks.capture(t.s().set(eta=now + timedelta(minutes=5)))
    message = tasks.outbox_message(captured, now=now)

    assert message.delay_seconds == pytest.approx(300, abs=1)
    assert datetime.fromisoformat(
        message.properties["headers"]["eta"]
    ) == now + timedelta(minutes=5)


def test_set_queue_routes_to_that_queue(rel: Reliable) -> None:
    @rel.celery_app.task(name="unit.t")
    def t() -> None:
        return None

    _id, (captured,) = tasks.capture(t.s().set(queue="payments"))
    message = tasks.outbox_message(captured)

    assert (message.exchange, message.routing_key) == ("", "payments")


@pytest.mark.parametrize(
    ("routing_key", "expected"),
    [
        ("payments", "payments"),
        ("0." * 27 + "1.payments", "payments"),
        ("a.b", "a.b"),
        (None, None),
    ],
    ids=["plain", "native-delay", "dotted", "none"],
)
def test_failure_queue_drops_the_native_delay_prefix(
    routing_key: str | None, expected: str | None
) -> None:
    assert tasks.queue_name(routing_key) == expected
