"""
A tiny shop built on reliable: the app behind `make demo`, and an example to copy.

Placing an order writes the order, an ``order.created`` event and a ``charge`` task
in ONE PostgreSQL transaction (the outbox); ``reliable outbox relay`` publishes them
after the commit. The ``charge`` task runs effectively once (the inbox): its body
gets the connection of the task's transaction, and a duplicate delivery is skipped.
A declined card raises, the transaction rolls back, and the task is dead-lettered to
``shop.payments.dlq``, where ``reliable dlq replay`` finds it after the fix.

Run the worker with ``celery -A shop worker -Q shop.payments`` (from this directory),
and the commands below with ``python shop.py --help``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import psycopg
from celery import Celery
from celery.signals import worker_init
from kombu import Exchange, Queue

from reliable import Reliable

AMQP_URL = os.environ.get("RELIABLE_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
DATABASE_URL = os.environ.get(
    "RELIABLE_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)

app = Celery("shop", broker=AMQP_URL)
app.conf.update(
    # The queue, its exchange and its dead-letter exchange are declared by
    # `reliable topology apply ops/demo/topology.yaml`; no_declare keeps Celery from
    # redeclaring them with other arguments (406 PRECONDITION_FAILED).
    task_queues=[
        Queue(
            "shop.payments",
            Exchange("shop.tasks", type="direct"),
            routing_key="shop.payments",
            no_declare=True,
        )
    ],
    task_default_queue="shop.payments",
    # A failed task is rejected (dead-lettered), not acked away.
    task_acks_late=True,
    task_acks_on_failure_or_timeout=False,
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
)

rel = Reliable(
    database_url=DATABASE_URL,
    amqp_url=AMQP_URL,
    db_schema=os.environ.get("RELIABLE_DB_SCHEMA"),  # None: the default, "reliable"
    celery_app=app,
)


@worker_init.connect
def serve_metrics(**_: Any) -> None:
    """Expose the inbox counters on SHOP_METRICS_PORT (set by run.sh for the worker)."""
    # The demo's worker uses the solo pool, so tasks run in this very process. With
    # the prefork pool every child has its own counters: serve them per child (from
    # worker_process_init, one port each) instead.
    port = os.environ.get("SHOP_METRICS_PORT")
    if port:
        rel.metrics.serve(
            int(port), addr=os.environ.get("SHOP_METRICS_ADDR", "127.0.0.1")
        )


class PaymentDeclined(Exception):
    """The card limit is below the order amount."""


@rel.task(name="shop.charge", queue="shop.payments")
def charge(conn: Any, order_id: int, amount_cents: int) -> int:
    """Charge one order; runs once per task id however often it is delivered."""
    (limit,) = conn.execute("select limit_cents from shop_demo.card_limit").fetchone()
    if amount_cents > limit:
        # Rolls back everything this task wrote; the message goes to shop.payments.dlq.
        msg = f"order {order_id}: {amount_cents} > limit {limit}"
        raise PaymentDeclined(msg)
    conn.execute(
        "insert into shop_demo.charges (order_id, amount_cents) values (%s, %s)",
        (order_id, amount_cents),
    )
    # Leaves only if this task's transaction commits.
    rel.outbox.publish(
        conn,
        exchange="shop.events",
        routing_key="order.paid",
        body={"order_id": order_id, "amount_cents": amount_cents},
    )
    return order_id


class OutOfStock(Exception):
    """Raised on purpose to show that a rolled-back order publishes nothing."""


def place_order(conn: psycopg.Connection[Any], amount_cents: int) -> dict[str, Any]:
    """Write an order, its event and its charge task in one transaction."""
    with conn.transaction():
        (order_id,) = conn.execute(
            "insert into shop_demo.orders (amount_cents) values (%s) returning id",
            (amount_cents,),
        ).fetchone()
        rel.outbox.publish(
            conn,
            exchange="shop.events",
            routing_key="order.created",
            body={"order_id": order_id, "amount_cents": amount_cents},
        )
        task_id = rel.outbox.enqueue(conn, charge.s(order_id, amount_cents))
    return {"order_id": order_id, "amount_cents": amount_cents, "task_id": task_id}


def setup(limit_cents: int) -> None:
    with psycopg.connect(DATABASE_URL, autocommit=True) as conn, conn.transaction():
        conn.execute("create schema if not exists shop_demo")
        conn.execute(
            "create table if not exists shop_demo.orders ("
            " id bigserial primary key, amount_cents int not null,"
            " created_at timestamptz not null default now())"
        )
        # No unique constraint on order_id: the inbox, not the table, must keep a
        # charge from running twice, and the demo checks that it did.
        conn.execute(
            "create table if not exists shop_demo.charges ("
            " id bigserial primary key, order_id bigint not null,"
            " amount_cents int not null, charged_at timestamptz not null default now())"
        )
        conn.execute(
            "create table if not exists shop_demo.card_limit (limit_cents int not null)"
        )
        conn.execute("delete from shop_demo.card_limit")
        conn.execute(
            "insert into shop_demo.card_limit (limit_cents) values (%s)", (limit_cents,)
        )


def place(count: int, big_every: int) -> dict[str, Any]:
    """Place *count* orders; every *big_every*-th one is over the initial card limit."""
    placed = []
    with psycopg.connect(DATABASE_URL, autocommit=True) as conn:
        for i in range(1, count + 1):
            amount = 25_000 if i % big_every == 0 else 2_500
            placed.append(place_order(conn, amount))
        rolled_back = None
        try:
            with conn.transaction():
                (rolled_back,) = conn.execute(
                    "insert into shop_demo.orders (amount_cents) values (1) returning id"
                ).fetchone()
                rel.outbox.enqueue(conn, charge.s(rolled_back, 1))
                raise OutOfStock(rolled_back)
        except OutOfStock:
            pass  # the order, its event and its task are gone together
    return {"orders": placed, "rolled_back_order_id": rolled_back}


def resend(run: dict[str, Any], count: int) -> list[str]:
    """Send the charge tasks of the first *count* orders again, with the same task ids."""
    sent = []
    with psycopg.connect(DATABASE_URL, autocommit=True) as conn, conn.transaction():
        for order in run["orders"][:count]:
            signature = charge.s(order["order_id"], order["amount_cents"])
            sent.append(
                rel.outbox.enqueue(conn, signature.set(task_id=order["task_id"]))
            )
    return sent


def set_limit(limit_cents: int) -> None:
    with psycopg.connect(DATABASE_URL, autocommit=True) as conn:
        conn.execute("update shop_demo.card_limit set limit_cents = %s", (limit_cents,))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="shop.py", description=__doc__.split("\n\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("setup", help="create the shop_demo tables, set the card limit")
    p.add_argument("--limit-cents", type=int, default=10_000)
    p = sub.add_parser("place", help="place orders; prints them as JSON")
    p.add_argument("--count", type=int, default=12)
    p.add_argument("--big-every", type=int, default=4)
    p = sub.add_parser("resend", help="send some charge tasks again (same task ids)")
    p.add_argument("run_file", help="the JSON printed by `place`")
    p.add_argument("--count", type=int, default=3)
    p = sub.add_parser("set-limit", help="change the card limit (the 'fix')")
    p.add_argument("limit_cents", type=int)
    args = parser.parse_args(argv)

    if args.command == "setup":
        setup(args.limit_cents)
    elif args.command == "place":
        print(json.dumps(place(args.count, args.big_every), indent=2))
    elif args.command == "resend":
        with open(args.run_file) as f:
            print(json.dumps(resend(json.load(f), args.count)))
    elif args.command == "set-limit":
        set_limit(args.limit_cents)
    return 0


if __name__ == "__main__":
    sys.exit(main())
