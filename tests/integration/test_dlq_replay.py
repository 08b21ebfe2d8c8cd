"""Dead letters made for real on the broker, then shown, replayed, parked, moved and purged."""

from __future__ import annotations

import decimal
from datetime import UTC, datetime

import pika
import pytest

from reliable import errors
from reliable.dlq import DeadLetters, Target
from reliable.dlq_filters import Filter
from reliable.dlq_headers import HISTORY, ORIGIN_QUEUE, PARKED_REASON, REPLAY_COUNT
from reliable.metrics import Metrics
from tests.integration.dlq_support import (
    DLQ,
    connect,
    dead_letter,
    depth,
    drain,
    publish,
    reject_all,
    setup,
    snapshot,
    wait_depth,
    wait_for,
)


@pytest.fixture(name="ch")
def _ch(broker):
    conn = connect(broker.amqp_url)
    ch = conn.channel()
    setup(ch)
    yield ch
    conn.close()


def test_replay_returns_each_dead_letter_to_its_source_queue(broker, ch) -> None:
    dead_letter(
        ch,
        "work",
        b"w1",
        message_id="m-w1",
        correlation_id="c-w1",
        headers={"id": "t-w1"},
    )
    dead_letter(ch, "other", b"o1", message_id="m-o1")
    dead_letter(ch, "work", b"\xff\xfe not utf-8", message_id="m-w2")
    wait_depth(ch, DLQ, 3)

    report = DeadLetters(broker.amqp_url).replay(DLQ)

    assert report.counts["replayed"] == 3
    assert report.complete
    assert depth(ch, DLQ) == 0
    work = drain(ch, "work")
    other = drain(ch, "other")
    assert [b for _p, b in work] == [b"w1", b"\xff\xfe not utf-8"]
    assert [b for _p, b in other] == [b"o1"]
    props = next(p for p, b in work if b == b"w1")
    assert (props.message_id, props.correlation_id, props.headers["id"]) == (
        "m-w1",
        "c-w1",
        "t-w1",
    )
    assert props.headers[REPLAY_COUNT] == 1
    assert props.headers[ORIGIN_QUEUE] == "work"
    assert "x-death" not in props.headers
    assert props.headers[HISTORY][0]["x-death"][0]["queue"] == "work"
    assert props.delivery_mode == 2


def test_every_kind_of_dead_letter_is_traced_to_its_queue_and_reason(
    broker, ch
) -> None:
    dl = {"x-dead-letter-exchange": "dlx"}
    ch.queue_declare("ttl-msg", durable=True, arguments=dl)
    ch.queue_declare("ttl-queue", durable=True, arguments={**dl, "x-message-ttl": 1})
    ch.queue_declare("short", durable=True, arguments={**dl, "x-max-length": 1})
    ch.queue_declare(
        "qq",
        durable=True,
        arguments={**dl, "x-queue-type": "quorum", "x-delivery-limit": 1},
    )
    dead_letter(ch, "work", b"rejected", message_id="rejected")
    publish(ch, "ttl-msg", b"expired-msg", message_id="expired-msg", expiration="1")
    publish(ch, "ttl-queue", b"expired-queue", message_id="expired-queue")
    publish(ch, "short", b"maxlen", message_id="maxlen")
    publish(ch, "short", b"kept", message_id="kept")
    publish(ch, "qq", b"limit", message_id="limit")

    def fail_qq_delivery() -> bool:
        method, _p, _b = ch.basic_get("qq")
        if method is not None:
            ch.basic_nack(method.delivery_tag, requeue=True)
        return depth(ch, DLQ) >= 5

    wait_for(
        fail_qq_delivery, what="the quorum queue to dead-letter past its delivery limit"
    )
    wait_depth(ch, DLQ, 5)
    before = snapshot(ch, DLQ)

    letters, _report = DeadLetters(broker.amqp_url).peek(DLQ)

    found = {
        x.message.properties.message_id: (x.origin.queue, x.origin.reason)
        for x in letters
    }
    assert found == {
        "rejected": ("work", "rejected"),
        "expired-msg": ("ttl-msg", "expired"),
        "expired-queue": ("ttl-queue", "expired"),
        "maxlen": ("short", "maxlen"),
        "limit": ("qq", "delivery_limit"),
    }
    assert snapshot(ch, DLQ) == before


@pytest.mark.parametrize(
    ("flt", "expected"),
    [
        (Filter(source_queues=("other",)), {"o1"}),
        (Filter(reasons=("expired",)), {"e1"}),
        (Filter(headers=(("tenant", "acme"),)), {"w1"}),
        (Filter(tasks=("app.add",)), {"w2"}),
        (Filter(message_ids=("c-o1",)), {"o1"}),
        (Filter(newer_than_seconds=3600), {"w1", "w2", "o1", "e1"}),
        (Filter(older_than_seconds=3600), set()),
        (Filter(source_queues=("work",), limit=1), {"w1"}),
    ],
    ids=["source", "reason", "header", "task", "id", "newer", "older", "limit"],
)
def test_filters_select_exactly_the_matching_messages(
    broker, ch, flt, expected
) -> None:
    ch.queue_declare(
        "ttl",
        durable=True,
        arguments={"x-dead-letter-exchange": "dlx", "x-message-ttl": 1},
    )
    dead_letter(ch, "work", b"1", message_id="w1", headers={"tenant": "acme"})
    dead_letter(
        ch,
        "work",
        b"2",
        message_id="w2",
        headers={"task": "app.add", "tenant": "other"},
    )
    dead_letter(ch, "other", b"3", message_id="o1", correlation_id="c-o1")
    publish(ch, "ttl", b"4", message_id="e1")
    wait_depth(ch, DLQ, 4)

    report = DeadLetters(broker.amqp_url).replay(
        DLQ, flt, target=Target(queue="other"), max_replays=99
    )

    moved = {p.message_id for p, _b in drain(ch, "other")}
    assert moved == expected
    assert report.counts.get("replayed", 0) == len(expected)
    assert depth(ch, DLQ) == 4 - len(expected)


def test_dry_run_changes_nothing(broker, ch) -> None:
    for i in range(5):
        dead_letter(
            ch, "work" if i % 2 else "other", f"m{i}".encode(), message_id=f"m{i}"
        )
    wait_depth(ch, DLQ, 5)
    before = snapshot(ch, DLQ)

    report = DeadLetters(broker.amqp_url).replay(DLQ, dry_run=True)

    assert snapshot(ch, DLQ) == before
    assert depth(ch, "work") == depth(ch, "other") == 0
    assert report.counts["would_replay"] == 5
    assert {(e["id"], e["to"]) for e in report.plan} == {
        ("m0", "other"),
        ("m1", "work"),
        ("m2", "other"),
        ("m3", "work"),
        ("m4", "other"),
    }


def test_show_keeps_a_quorum_dlq_in_order(broker) -> None:
    conn = connect(broker.amqp_url)
    ch = conn.channel()
    setup(ch, dlq_type="quorum")
    for i in range(6):
        dead_letter(ch, "work", f"m{i}".encode(), message_id=f"m{i}")
    wait_depth(ch, DLQ, 6)

    letters, _ = DeadLetters(broker.amqp_url).peek(DLQ, Filter(limit=3))
    after = [p.message_id for p, _b in drain(ch, DLQ)]

    assert [x.message.properties.message_id for x in letters] == ["m0", "m1", "m2"]
    assert after == [f"m{i}" for i in range(6)]
    conn.close()


def test_messages_without_origin_stay_and_are_reported(broker, ch) -> None:
    publish(ch, DLQ, b"orphan", message_id="orphan")
    dead_letter(ch, "work", b"known", message_id="known")
    wait_depth(ch, DLQ, 2)

    report = DeadLetters(broker.amqp_url).replay(DLQ)

    assert report.counts["unknown_origin"] == 1
    assert report.counts["replayed"] == 1
    assert not report.complete
    assert [p.message_id for p, _b in drain(ch, DLQ)] == ["orphan"]


def test_returned_messages_stay_in_the_dlq(broker, ch) -> None:
    ch.exchange_declare("nowhere", "direct", durable=True)
    dead_letter(ch, "work", b"x", message_id="x")
    dead_letter(ch, "work", b"y")  # no message_id: the return is matched by content
    wait_depth(ch, DLQ, 2)

    report = DeadLetters(broker.amqp_url).replay(
        DLQ, target=Target(exchange="nowhere", routing_key="k")
    )

    assert report.counts["returned"] == 2
    assert depth(ch, DLQ) == 2


def test_missing_origin_queue_keeps_the_message(broker, ch) -> None:
    ch.queue_declare("gone", durable=True, arguments={"x-dead-letter-exchange": "dlx"})
    dead_letter(ch, "gone", b"x", message_id="x")
    wait_depth(ch, DLQ, 1)
    ch.queue_delete("gone")

    report = DeadLetters(broker.amqp_url).replay(DLQ)

    assert report.counts["origin_missing"] == 1
    assert depth(ch, DLQ) == 1


def test_missing_queues_fail_before_anything_is_taken(broker, ch) -> None:
    dead_letter(ch, "work", b"x", message_id="x")
    wait_depth(ch, DLQ, 1)
    dl = DeadLetters(broker.amqp_url)

    with pytest.raises(errors.QueueNotFound) as missing_dlq:
        dl.replay("no-such-dlq")
    with pytest.raises(errors.QueueNotFound) as missing_target:
        dl.replay(DLQ, target=Target(queue="no-such-target"))
    with pytest.raises(errors.ExchangeNotFound):
        dl.replay(DLQ, target=Target(exchange="no-such-exchange"))

    assert (missing_dlq.value.queue, missing_target.value.queue) == (
        "no-such-dlq",
        "no-such-target",
    )
    assert depth(ch, DLQ) == 1


def test_broker_down_is_a_connection_error() -> None:
    with pytest.raises(errors.BrokerConnectionError):
        DeadLetters("amqp://guest:guest@127.0.0.1:1/%2F").replay(DLQ)


def test_the_replay_cap_parks_a_looping_message(broker, ch) -> None:
    dead_letter(ch, "work", b"poison", message_id="poison")
    wait_depth(ch, DLQ, 1)
    metrics = Metrics()
    dl = DeadLetters(broker.amqp_url, metrics=metrics)
    outcomes = []
    for _ in range(3):
        report = dl.replay(DLQ, max_replays=2)
        outcomes.append((report.counts.get("replayed", 0) and "replayed") or "parked")
        if depth(ch, "work"):
            reject_all(ch, "work")  # the consumer fails it again
            wait_depth(ch, DLQ, 1)

    assert outcomes == ["replayed", "replayed", "parked"]
    parked = drain(ch, f"{DLQ}.parking-lot")
    assert [p.message_id for p, _b in parked] == ["poison"]
    assert parked[0][0].headers[REPLAY_COUNT] == 2
    assert parked[0][0].headers[ORIGIN_QUEUE] == "work"
    assert PARKED_REASON in parked[0][0].headers
    assert depth(ch, DLQ) == 0
    assert metrics.value("reliable_dlq_replayed_total", {"queue": DLQ}) == 2
    assert metrics.value("reliable_dlq_parked_total", {"queue": DLQ}) == 1


def test_move_keeps_headers_and_body(broker, ch) -> None:
    ch.queue_declare("archive", durable=True)
    dead_letter(
        ch, "work", b"\x00\x01", message_id="a", headers={"n": decimal.Decimal("1.5")}
    )
    wait_depth(ch, DLQ, 1)

    report = DeadLetters(broker.amqp_url).move(DLQ, "archive")

    [(props, body)] = drain(ch, "archive")
    assert report.counts["moved"] == 1
    assert body == b"\x00\x01"
    assert props.headers["n"] == decimal.Decimal("1.5")
    assert props.headers["x-death"][0]["queue"] == "work"
    assert depth(ch, DLQ) == 0


def test_purge_with_a_filter_removes_only_the_matching(broker, ch) -> None:
    dead_letter(ch, "work", b"1", message_id="w")
    dead_letter(ch, "other", b"2", message_id="o")
    wait_depth(ch, DLQ, 2)
    dl = DeadLetters(broker.amqp_url)

    filtered = dl.purge(DLQ, Filter(source_queues=("work",)))
    left = [p.message_id for p, _b in snapshot_props(ch)]
    everything = dl.purge(DLQ)

    assert filtered.counts["purged"] == 1
    assert left == ["o"]
    assert everything.counts["purged"] == 1
    assert depth(ch, DLQ) == 0


def snapshot_props(ch):
    return [
        (type("P", (), {"message_id": mid})(), b)
        for b, mid, _c, _h in snapshot(ch, DLQ)
    ]


def test_runs_are_audited_and_listed(broker, ch, database) -> None:
    dead_letter(ch, "work", b"1", message_id="w")
    wait_depth(ch, DLQ, 1)
    dl = DeadLetters(
        broker.amqp_url, database_url=database.url, db_schema=database.schema
    )

    dry = dl.replay(DLQ, Filter(reasons=("rejected",)), dry_run=True)
    real = dl.replay(DLQ)
    runs = dl.history(queue=DLQ)

    assert [r["id"] for r in runs] == [real.audit_id, dry.audit_id]
    assert runs[0]["counts"]["replayed"] == 1
    assert runs[1]["dry_run"] is True
    assert runs[1]["filters"] == {"reason": ["rejected"]}
    assert runs[0]["os_user"]


def test_timestamps_in_headers_survive_a_replay(broker, ch) -> None:
    when = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
    dead_letter(
        ch,
        "work",
        b"t",
        message_id="t",
        headers={"at": when, "nested": {"l": [1, "a", b"\xff"]}},
    )
    wait_depth(ch, DLQ, 1)

    DeadLetters(broker.amqp_url).replay(DLQ)

    [(props, _b)] = drain(ch, "work")
    assert props.headers["at"] == when
    assert props.headers["nested"] == {"l": [1, "a", b"\xff"]}
    assert isinstance(props.headers[HISTORY][0]["x-death"][0]["time"], datetime)
    assert pika  # drivers are allowed in tests


def test_repeated_looks_at_a_quorum_dlq_with_a_delivery_limit_lose_nothing(
    broker,
) -> None:
    conn = connect(broker.amqp_url)
    ch = conn.channel()
    ch.exchange_declare("dlx", "fanout", durable=True)
    # No dead-letter exchange on the DLQ: past its limit a message would be dropped.
    ch.queue_declare(
        DLQ, durable=True, arguments={"x-queue-type": "quorum", "x-delivery-limit": 2}
    )
    ch.queue_bind(DLQ, "dlx")
    ch.queue_declare("work", durable=True, arguments={"x-dead-letter-exchange": "dlx"})
    for i in range(3):
        dead_letter(ch, "work", f"m{i}".encode(), message_id=f"m{i}", headers={"k": i})
    wait_depth(ch, DLQ, 3)
    guarded = DeadLetters(broker.amqp_url, management_url=broker.management_url)

    reports = [guarded.peek(DLQ)[1] for _ in range(6)]
    letters, _ = guarded.peek(DLQ)

    assert sorted(x.message.properties.message_id for x in letters) == [
        "m0",
        "m1",
        "m2",
    ]
    assert sum(r.counts.get("refreshed", 0) for r in reports) >= 3
    assert all(x.headers["k"] == int(x.message.body[1:]) for x in letters)
    assert all(x.origin.queue == "work" for x in letters)
    conn.close()


def test_without_the_guard_looks_would_drop_messages(broker) -> None:
    conn = connect(broker.amqp_url)
    ch = conn.channel()
    ch.exchange_declare("dlx", "fanout", durable=True)
    ch.queue_declare(
        DLQ, durable=True, arguments={"x-queue-type": "quorum", "x-delivery-limit": 2}
    )
    ch.queue_bind(DLQ, "dlx")
    ch.queue_declare("work", durable=True, arguments={"x-dead-letter-exchange": "dlx"})
    dead_letter(ch, "work", b"m", message_id="m")
    wait_depth(ch, DLQ, 1)
    unguarded = DeadLetters(broker.amqp_url)  # no management URL: limit unknown

    for _ in range(4):
        unguarded.peek(DLQ)

    # This is what the guard prevents: the broker dropped the message.
    wait_depth(ch, DLQ, 0)
    conn.close()


@pytest.mark.parametrize(
    ("dlq_type", "total", "batch"),
    [("classic", 20, 4), ("quorum", 20, 4), ("quorum", 90, 40)],
    ids=["classic", "quorum", "quorum-wide"],
)
def test_many_held_messages_widen_the_window_and_keep_their_order(
    broker, dlq_type, total, batch
) -> None:
    conn = connect(broker.amqp_url)
    ch = conn.channel()
    setup(ch, dlq_type=dlq_type)
    picked = (total - 3, total - 1)
    for i in range(total):
        publish(
            ch, "other" if i in picked else "work", f"m{i}".encode(), message_id=f"m{i}"
        )
    wait_depth(ch, "work", total - 2)
    reject_all(ch, "work")
    reject_all(ch, "other")
    wait_depth(ch, DLQ, total)

    # Small batches (prefetch = 2 x batch): every slot fills with held
    # messages long before the matches, so more consumers are opened.
    report = DeadLetters(broker.amqp_url, batch_size=batch).replay(
        DLQ, Filter(source_queues=("other",))
    )
    left = [p.message_id for p, _b in drain(ch, DLQ)]

    assert report.counts["replayed"] == 2
    assert report.counts["not_selected"] == total - 2
    assert sorted(p.message_id for p, _b in drain(ch, "other")) == sorted(
        f"m{i}" for i in picked
    )
    assert left == [f"m{i}" for i in range(total) if i not in picked]
    conn.close()


def test_broker_death_counts_restart_after_a_replay_and_ours_continue(
    broker, ch
) -> None:
    dead_letter(ch, "work", b"x", message_id="x")
    wait_depth(ch, DLQ, 1)
    dl = DeadLetters(broker.amqp_url)

    dl.replay(DLQ)
    reject_all(ch, "work")
    wait_depth(ch, DLQ, 1)
    [letter], _ = dl.peek(DLQ)

    # On 3.10 a republished x-death would have continued to count: 2. The
    # copy carried none, so the broker starts at 1 as 4.x always does.
    assert letter.origin.deaths[0].count == 1
    assert letter.replay_count == 1
    assert letter.headers[HISTORY][0]["x-death"][0]["count"] == 1
    assert letter.origin.queue == "work"


def test_replay_to_an_exchange_uses_the_given_routing_key(broker, ch) -> None:
    ch.exchange_declare("retry", "direct", durable=True)
    ch.queue_bind("other", "retry", "again")
    dead_letter(ch, "work", b"x", message_id="x")
    wait_depth(ch, DLQ, 1)

    report = DeadLetters(broker.amqp_url).replay(
        DLQ, target=Target(exchange="retry", routing_key="again")
    )

    assert report.counts["replayed"] == 1
    [(props, _b)] = drain(ch, "other")
    assert props.headers[ORIGIN_QUEUE] == "work"
    assert depth(ch, "work") == 0
