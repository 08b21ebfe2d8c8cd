"""
Ordering keys: same-key messages leave in commit order, also when the
transactions took their xids in the other order and with several relays.

"Commit order" here: if transaction B starts to commit after transaction A's
COMMIT returned, A's messages for a key are published before B's. The stamp
is taken by a deferred trigger inside COMMIT, so neither xid order (when the
transaction first wrote) nor insert order decides.
"""

from __future__ import annotations

import random
import threading
from collections import defaultdict

from psycopg import sql

from reliable import Reliable
from reliable.retry import RetryPolicy
from tests.conftest import Broker, Database
from tests.integration.outbox_support import EXCHANGE, declare, make_relay, read_queue


def _publish(rel: Reliable, conn, key: str, body: object) -> str:
    return rel.outbox.publish(
        conn, exchange=EXCHANGE, routing_key="orders", body=body, ordering_key=key
    )


def test_out_of_order_commits_publish_in_commit_order(
    broker: Broker, database: Database
) -> None:
    declare(broker.amqp_url, "orders")
    rel = Reliable(database_url=database.url, db_schema=database.schema)
    with database.connect() as a, database.connect() as b:
        # A writes first, so A holds the smaller xid ...
        _publish(rel, a, "order-42", "A")
        _publish(rel, b, "order-42", "B")
        xid_a = a.execute("SELECT pg_current_xact_id()::text::bigint").fetchone()[0]
        xid_b = b.execute("SELECT pg_current_xact_id()::text::bigint").fetchone()[0]
        # ... but B commits first.
        b.commit()
        a.commit()
    assert xid_a < xid_b

    make_relay(broker, database).run_once()

    got = read_queue(broker.amqp_url, "orders", expect=2)
    assert [body for _, body in got] == ["B", "A"]


def test_an_open_transaction_does_not_hold_back_a_committed_one(
    broker: Broker, database: Database
) -> None:
    declare(broker.amqp_url, "orders")
    rel = Reliable(database_url=database.url, db_schema=database.schema)
    relay = make_relay(broker, database)
    with database.connect() as a, database.connect() as b:
        _publish(rel, a, "order-7", "A")  # stays open while B commits and is relayed
        _publish(rel, b, "order-7", "B")
        b.commit()
        relay.run_once()
        first = read_queue(broker.amqp_url, "orders", expect=1)
        a.commit()
    relay.run_once()
    second = read_queue(broker.amqp_url, "orders", expect=1)
    assert [body for _, body in first + second] == ["B", "A"]


def test_failed_head_holds_back_its_key_but_not_other_keys(
    broker: Broker, database: Database
) -> None:
    declare(broker.amqp_url, "orders")
    rel = Reliable(database_url=database.url, db_schema=database.schema)
    with database.connect() as conn, conn.transaction():
        rel.outbox.publish(
            conn,
            exchange=EXCHANGE,
            routing_key="nowhere",
            body="lost-head",
            ordering_key="k1",
        )
        _publish(rel, conn, "k1", "k1-second")
        _publish(rel, conn, "k2", "k2-first")

    relay = make_relay(
        broker, database, retry=RetryPolicy(max_attempts=2, base_seconds=3600)
    )
    relay.run_once()
    # k1's head was returned and backs off: k1-second must wait; k2 flows.
    assert [b for _, b in read_queue(broker.amqp_url, "orders", expect=1)] == [
        "k2-first"
    ]
    # Once the head is dead (kept for inspection), the key moves on.
    with database.connect() as conn:
        conn.execute(
            sql.SQL(
                "UPDATE {}.reliable_outbox SET available_at = now() WHERE routing_key = 'nowhere'"
            ).format(sql.Identifier(database.schema))
        )
    relay.run_once()
    assert [b for _, b in read_queue(broker.amqp_url, "orders", expect=1)] == [
        "k1-second"
    ]


def test_per_key_order_under_concurrent_writers_and_two_relays(
    broker: Broker, database: Database
) -> None:
    """
    Writers serialise on a per-key counter row (as real code serialises on the
    entity it changes), after an unrelated write that takes an xid early, so xid
    order and commit order disagree often. Two relays run meanwhile. Each key's
    counter values must arrive strictly in order, each exactly once.
    """
    declare(broker.amqp_url, "orders")
    schema = sql.Identifier(database.schema)
    keys = ["k1", "k2", "k3"]
    with database.connect() as conn:
        conn.execute(
            sql.SQL("CREATE TABLE {}.counters (key text PRIMARY KEY, n int)").format(
                schema
            )
        )
        conn.execute(sql.SQL("CREATE TABLE {}.noise (id serial)").format(schema))
        for k in keys:
            conn.execute(
                sql.SQL("INSERT INTO {}.counters VALUES (%s, 0)").format(schema), [k]
            )
        conn.commit()
    rel = Reliable(database_url=database.url, db_schema=database.schema)
    per_writer = 60

    def writer(seed: int) -> None:
        rng = random.Random(seed)
        with database.connect() as conn:
            for _ in range(per_writer):
                key = rng.choice(keys)
                with conn.transaction():
                    conn.execute(
                        sql.SQL("INSERT INTO {}.noise DEFAULT VALUES").format(schema)
                    )
                    if rng.random() < 0.5:
                        threading.Event().wait(rng.random() * 0.005)
                    (n,) = conn.execute(
                        sql.SQL(
                            "UPDATE {}.counters SET n = n + 1 WHERE key = %s RETURNING n"
                        ).format(schema),
                        [key],
                    ).fetchone()
                    _publish(rel, conn, key, {"key": key, "n": n})
                    if rng.random() < 0.5:
                        threading.Event().wait(rng.random() * 0.005)

    relays = [make_relay(broker, database, batch_size=20) for _ in range(2)]
    relay_threads = [threading.Thread(target=r.run, daemon=True) for r in relays]
    writer_threads = [threading.Thread(target=writer, args=(s,)) for s in range(3)]
    for t in relay_threads + writer_threads:
        t.start()
    for t in writer_threads:
        t.join(60)
    total = per_writer * len(writer_threads)
    got = read_queue(broker.amqp_url, "orders", expect=total, timeout=60.0, settle=1.0)
    for r in relays:
        r.stop()
    for t in relay_threads:
        t.join(15)

    seen: dict[str, list[int]] = defaultdict(list)
    for _, body in got:
        seen[body["key"]].append(body["n"])
    assert sum(len(v) for v in seen.values()) == total
    for key, values in seen.items():
        assert values == list(range(1, len(values) + 1)), (
            f"{key} out of order: {values}"
        )
    assert all(r.stats.published > 0 for r in relays)
