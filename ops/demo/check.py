"""
Checks behind ops/demo/run.sh: wait for a condition with a deadline, or fail.

Kept apart from shop.py so the shop stays an example of the API, not of polling.
Each command exits 0 when its condition holds and 1 (with what it saw) otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import sys
import time
import urllib.request
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote, urlsplit

import pika
import psycopg

AMQP_URL = os.environ.get("RELIABLE_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
MANAGEMENT_URL = os.environ.get(
    "RELIABLE_MANAGEMENT_URL", "http://guest:guest@127.0.0.1:15672"
)
DATABASE_URL = os.environ.get(
    "RELIABLE_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


def wait_for(
    what: str, condition: Callable[[], tuple[bool, str]], timeout: float
) -> bool:
    deadline = time.monotonic() + timeout
    seen = ""
    while time.monotonic() < deadline:
        try:
            ok, seen = condition()
        except Exception as exc:  # the service may still be starting
            ok, seen = False, f"{type(exc).__name__}: {exc}"
        if ok:
            print(f"ok: {what} ({seen})")
            return True
        time.sleep(0.5)
    print(
        f"timed out after {timeout:.0f}s waiting for {what}; last seen: {seen}",
        file=sys.stderr,
    )
    return False


def services(timeout: float) -> bool:
    """The broker, its management API and PostgreSQL accept TCP connections."""
    ok = True
    for name, url, default_port in (
        ("RabbitMQ", AMQP_URL, 5672),
        ("RabbitMQ management API", MANAGEMENT_URL, 15672),
        ("PostgreSQL", DATABASE_URL, 5432),
    ):
        parts = urlsplit(url)
        host, port = parts.hostname or "127.0.0.1", parts.port or default_port

        def probe(host: str = host, port: int = port) -> tuple[bool, str]:
            with socket.create_connection((host, port), timeout=2):
                return True, f"{host}:{port}"

        ok = wait_for(name, probe, timeout) and ok
    return ok


def queue_depth(queue: str) -> int:
    # A passive declare reads the live count from the queue itself; the management
    # API's figures for quorum queues lag by several seconds.
    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    try:
        frame = connection.channel().queue_declare(queue=unquote(queue), passive=True)
        return int(frame.method.message_count)
    finally:
        connection.close()


def purge(queues: list[str]) -> bool:
    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    try:
        channel = connection.channel()
        for queue in queues:
            frame = channel.queue_purge(queue=queue)
            print(f"ok: purged {frame.method.message_count} messages from {queue}")
    finally:
        connection.close()
    return True


def charges(run: dict[str, Any]) -> dict[int, int]:
    """Number of charges per order of this run (and of its rolled-back order)."""
    ids = [o["order_id"] for o in run["orders"]] + [run["rolled_back_order_id"]]
    with psycopg.connect(DATABASE_URL) as conn:
        rows = conn.execute(
            "select order_id, count(*) from shop_demo.charges"
            " where order_id = any(%s) group by order_id",
            (ids,),
        ).fetchall()
    return {int(order_id): int(n) for order_id, n in rows}


def settled(
    run: dict[str, Any], charged: int, dlq: str, dead: int, timeout: float
) -> bool:
    """Wait until *charged* orders are paid and *dlq* holds *dead* messages."""

    def condition() -> tuple[bool, str]:
        paid = charges(run)
        depth = queue_depth(dlq)
        return len(
            paid
        ) == charged and depth == dead, f"{len(paid)} paid, {depth} in {dlq}"

    if not wait_for(
        f"{charged} orders paid and {dead} dead letters", condition, timeout
    ):
        return False
    return exactly_once(run)


def exactly_once(run: dict[str, Any]) -> bool:
    paid = charges(run)
    twice = {order: n for order, n in paid.items() if n > 1}
    if twice:
        print(f"orders charged more than once: {twice}", file=sys.stderr)
        return False
    if run["rolled_back_order_id"] in paid:
        print("the rolled-back order was charged", file=sys.stderr)
        return False
    print(f"ok: every paid order charged exactly once ({len(paid)} orders)")
    return True


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.read().decode())


def metric_sum(url: str, name: str) -> float:
    text = scrape(url)
    pattern = re.compile(rf"^{re.escape(name)}(\{{[^}}]*\}})? (\S+)$", re.MULTILINE)
    found = pattern.findall(text)
    if not found:
        msg = f"{name} not exported by {url}"
        raise LookupError(msg)
    return sum(float(value) for _labels, value in found)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="check.py", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--timeout", type=float, default=60.0)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("services", help="wait until RabbitMQ and PostgreSQL answer")
    p = sub.add_parser("settled", help="wait for paid orders and dead letters")
    p.add_argument("run_file")
    p.add_argument("--charged", type=int, required=True)
    p.add_argument("--dlq", required=True)
    p.add_argument("--dead", type=int, required=True)
    p = sub.add_parser("depth", help="a queue holds exactly N messages")
    p.add_argument("queue")
    p.add_argument("expected", type=int)
    p = sub.add_parser("purge", help="empty the demo's queues")
    p.add_argument("queues", nargs="+")
    p = sub.add_parser("dump", help="print the reliable_* samples of a /metrics page")
    p.add_argument("url")
    p = sub.add_parser("metric", help="print the sum of a metric's samples")
    p.add_argument("url")
    p.add_argument("name")
    p = sub.add_parser("metric-at-least", help="wait until a metric's sum reaches N")
    p.add_argument("url")
    p.add_argument("name")
    p.add_argument("minimum", type=float)
    args = parser.parse_args(argv)

    if args.command == "services":
        ok = services(args.timeout)
    elif args.command == "settled":
        with open(args.run_file) as f:
            run = json.load(f)
        ok = settled(run, args.charged, args.dlq, args.dead, args.timeout)
    elif args.command == "depth":
        depth = queue_depth(args.queue)
        ok = depth == args.expected
        print(
            f"{'ok' if ok else 'unexpected'}: {args.queue} holds {depth} (expected {args.expected})"
        )
    elif args.command == "purge":
        ok = purge(args.queues)
    elif args.command == "dump":
        lines = scrape(args.url).splitlines()
        print("\n".join(line for line in lines if line.startswith("reliable_")))
        ok = True
    elif args.command == "metric":
        value = metric_sum(args.url, args.name)
        print(int(value) if value.is_integer() else value)
        ok = True
    else:

        def reached() -> tuple[bool, str]:
            value = metric_sum(args.url, args.name)
            return value >= args.minimum, f"{args.name} = {value:g}"

        ok = wait_for(f"{args.name} >= {args.minimum:g}", reached, args.timeout)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
