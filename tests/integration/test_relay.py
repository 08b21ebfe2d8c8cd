"""The relay against real RabbitMQ and PostgreSQL: what is published, what is not."""

from __future__ import annotations

import threading
from collections import Counter

import pytest

from reliable import Reliable
from reliable.retry import RetryPolicy
from tests.conftest import Broker, Database
from tests.integration.outbox_support import (
    EXCHANGE,
    declare,
    make_relay,
    outbox_rows,
    read_queue,
    wait_for,
    write,
)


def test_committed_transactions_publish_and_rolled_back_ones_never_do(
    broker: Broker, database: Database
) -> None:
    declare(broker.amqp_url, "orders")
    rel = Reliable(database_url=database.url, db_schema=database.schema)
    committed = []
    with database.connect() as conn:
        for i in range(20):
            try:
                with conn.transaction():
                    mid = rel.outbox.publish(
                        conn, exchange=EXCHANGE, routing_key="orders", body={"n": i}
                    )
                    if i % 2:
                        raise RuntimeError("business logic failed")
                committed.append(mid)
            except RuntimeError:
                pass

    stats = make_relay(broker, database).run_once()

    got = read_queue(broker.amqp_url, "orders", expect=len(committed))
    assert sorted(mid for mid, _ in got) == sorted(committed)
    assert [body["n"] for _, body in got] == list(range(0, 20, 2))
    assert stats.published == 10
    assert outbox_rows(database) == []  # confirmed rows are deleted by default


def test_unroutable_and_missing_exchange_rows_die_while_others_flow(
    broker: Broker, database: Database
) -> None:
    declare(broker.amqp_url, "orders")
    good = write(
        database, [{"routing_key": "orders", "body": {"n": i}} for i in range(5)]
    )
    unroutable = write(database, [{"routing_key": "nobody-listens", "body": {"x": 1}}])
    missing = write(
        database, [{"exchange": "no.such.exchange", "routing_key": "k", "body": {}}]
    )
    relay = make_relay(
        broker, database, retry=RetryPolicy(max_attempts=3, base_seconds=0, jitter=0)
    )

    stats = relay.run_once()

    assert sorted(
        m for m, _ in read_queue(broker.amqp_url, "orders", expect=5)
    ) == sorted(good)
    dead = {r["message_id"]: r for r in outbox_rows(database, "dead_at IS NOT NULL")}
    assert set(dead) == {*unroutable, *missing}
    assert all(r["attempts"] == 3 for r in dead.values())
    assert "returned: 312 NO_ROUTE" in dead[unroutable[0]]["last_error"]
    assert "refused" in dead[missing[0]]["last_error"]
    assert stats.dead == 2
    assert stats.by_reason == Counter({"returned": 3, "refused": 3})
    # A dead row is kept, never silently deleted, and is not retried.
    assert make_relay(broker, database).run_once().published == 0
    assert len(outbox_rows(database)) == 2


def test_failed_rows_back_off_instead_of_blocking_the_batch(
    broker: Broker, database: Database
) -> None:
    declare(broker.amqp_url, "orders")
    [bad] = write(database, [{"routing_key": "nobody-listens", "body": {}}])
    relay = make_relay(
        broker, database, retry=RetryPolicy(max_attempts=5, base_seconds=3600)
    )
    relay.run_once()
    good = write(
        database, [{"routing_key": "orders", "body": {"n": i}} for i in range(3)]
    )

    stats = relay.run_once()

    assert sorted(
        m for m, _ in read_queue(broker.amqp_url, "orders", expect=3)
    ) == sorted(good)
    [row] = outbox_rows(database)
    assert row["message_id"] == bad
    assert row["attempts"] == 1
    assert row["dead_at"] is None
    assert row["claim_token"] is None
    assert stats.published == 3


def test_delayed_message_is_not_published_before_it_is_due(
    broker: Broker, database: Database
) -> None:
    declare(broker.amqp_url, "orders")
    [later] = write(
        database, [{"routing_key": "orders", "body": "later", "delay": 2.0}]
    )
    [now] = write(database, [{"routing_key": "orders", "body": "now"}])
    relay = make_relay(broker, database)

    relay.run_once()
    first = read_queue(broker.amqp_url, "orders", expect=1)
    pending = outbox_rows(database)

    assert [m for m, _ in first] == [now]
    assert [r["message_id"] for r in pending] == [later]
    wait_for(
        lambda: outbox_rows(database, "available_at <= now()") != [], what="due time"
    )
    relay.run_once()
    assert [m for m, _ in read_queue(broker.amqp_url, "orders", expect=1)] == [later]


def test_listen_wakes_an_idle_relay(broker: Broker, database: Database) -> None:
    declare(broker.amqp_url, "orders")
    # A poll interval far above the wait below: only NOTIFY can wake it in time.
    relay = make_relay(broker, database, poll_interval_seconds=60.0)
    thread = threading.Thread(target=relay.run, daemon=True)
    thread.start()
    try:
        wait_for(
            lambda: relay.stats.batches == 0 and relay._conn is not None,
            what="relay start",
        )
        [mid] = write(database, [{"routing_key": "orders", "body": {"n": 1}}])
        got = read_queue(broker.amqp_url, "orders", expect=1, timeout=15.0)
    finally:
        relay.stop()
        thread.join(10)
    assert [m for m, _ in got] == [mid]
    assert not thread.is_alive()


def test_two_relays_at_once_publish_everything_exactly_once(
    broker: Broker, database: Database
) -> None:
    declare(broker.amqp_url, "orders")
    n = 3000
    ids = write(
        database, [{"routing_key": "orders", "body": {"n": i}} for i in range(n)]
    )
    relays = [make_relay(broker, database, batch_size=100) for _ in range(2)]
    threads = [threading.Thread(target=r.run_once) for r in relays]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)

    got = read_queue(broker.amqp_url, "orders", expect=n, timeout=30.0, settle=1.0)

    counts = Counter(m for m, _ in got)
    assert set(counts) == set(ids)
    assert max(counts.values()) == 1
    assert sum(r.stats.published for r in relays) == n
    assert all(r.stats.published > 0 for r in relays), "both relays took work"


@pytest.mark.parametrize("keep", [False, True])
def test_retention_keeps_published_rows_only_when_asked(
    broker: Broker, database: Database, keep: bool
) -> None:
    declare(broker.amqp_url, "orders")
    write(database, [{"routing_key": "orders", "body": {"n": i}} for i in range(5)])
    make_relay(
        broker, database, keep_published_seconds=3600.0 if keep else 0.0
    ).run_once()
    read_queue(broker.amqp_url, "orders", expect=5)
    kept = outbox_rows(database, "published_at IS NOT NULL")
    assert len(kept) == (5 if keep else 0)
    assert outbox_rows(database, "published_at IS NULL") == []


def test_metrics_count_published_failures_and_backlog(
    broker: Broker, database: Database
) -> None:
    declare(broker.amqp_url, "orders")
    write(database, [{"routing_key": "orders", "body": {"n": i}} for i in range(4)])
    write(database, [{"routing_key": "nowhere", "body": {}}])
    write(database, [{"routing_key": "orders", "body": {}, "delay": 3600}])
    rel = Reliable(
        database_url=database.url, amqp_url=broker.amqp_url, db_schema=database.schema
    )
    relay = rel.relay(retry_policy=RetryPolicy(max_attempts=1))

    relay.run_once()

    m = rel.metrics
    assert m.value("reliable_outbox_published_total", {"exchange": EXCHANGE}) == 4
    assert m.value("reliable_outbox_failures_total", {"reason": "returned"}) == 1
    assert m.value("reliable_outbox_dead_rows") == 1
    assert m.value("reliable_outbox_backlog") == 1  # the delayed one
    assert m.value("reliable_outbox_batch_duration_seconds_count") >= 1
    assert m.value("reliable_relay_last_batch_timestamp_seconds") > 0


def test_kept_published_rows_are_deleted_after_retention_in_small_batches(
    broker: Broker, database: Database
) -> None:
    declare(broker.amqp_url, "orders")
    write(database, [{"routing_key": "orders", "body": {"n": i}} for i in range(5)])
    make_relay(broker, database, keep_published_seconds=1.0).run_once()
    assert len(outbox_rows(database, "published_at IS NOT NULL")) == 5
    wait_for(
        lambda: (
            len(outbox_rows(database, "published_at < now() - interval '1 second'"))
            == 5
        ),
        what="rows past retention",
    )
    [fresh] = write(database, [{"routing_key": "orders", "body": "fresh"}])

    make_relay(
        broker, database, keep_published_seconds=1.0, cleanup_batch_size=2
    ).run_once()

    # The five old rows went (in batches of two); the one just published stays.
    assert [r["message_id"] for r in outbox_rows(database)] == [fresh]
    assert len(read_queue(broker.amqp_url, "orders", expect=6)) == 6
