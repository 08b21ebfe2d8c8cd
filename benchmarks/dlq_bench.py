"""
Replay throughput and rate-limit accuracy of `reliable.dlq`.

Run: ``python -m benchmarks.dlq_bench [--messages 10000] [--queue-type classic|quorum]``
(needs RabbitMQ with the management plugin; ``RELIABLE_BENCH_AMQP_URL`` and
``RELIABLE_BENCH_MANAGEMENT_URL`` override the local defaults). It creates a
vhost of its own and deletes it afterwards.

1. Throughput: N real dead letters (published to ``work``, rejected into
   ``dlq``) are replayed back to ``work`` by `DeadLetters.replay`, and the
   same N by a raw pika baseline in the same run: one ``SelectConnection``
   consuming the DLQ and publishing with pipelined confirms, acking each dead
   letter when its copy is confirmed. Figures and the ratio are printed.
2. Rate limiting: replays at a few ``rate`` values, asked vs achieved.
"""

from __future__ import annotations

import argparse
import os
import time
import uuid
from typing import Any
from urllib.parse import quote

import pika

from reliable.dlq import DeadLetters
from reliable.management import ManagementClient

AMQP = os.environ.get("RELIABLE_BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
MGMT = os.environ.get(
    "RELIABLE_BENCH_MANAGEMENT_URL", "http://guest:guest@127.0.0.1:15672"
)
BODY = b"x" * 1024


def fill(url: str, n: int) -> None:
    """Publish *n* messages to ``work`` and reject them all into ``dlq``."""
    conn = pika.BlockingConnection(pika.URLParameters(url))
    ch = conn.channel()
    ch.confirm_delivery()
    for i in range(n):
        # One confirm per message is slow but this is setup, not the measurement.
        ch.basic_publish(
            "", "work", BODY, pika.BasicProperties(delivery_mode=2, message_id=f"m{i}")
        )
    ch.basic_qos(prefetch_count=1000)
    for rejected, (method, _props, _body) in enumerate(
        ch.consume("work", inactivity_timeout=2), start=1
    ):
        if method is None:
            break
        ch.basic_reject(method.delivery_tag, requeue=False)
        if rejected == n:
            break
    ch.cancel()
    deadline = time.monotonic() + 60
    while ch.queue_declare("dlq", passive=True).method.message_count < n:
        if time.monotonic() > deadline:
            raise SystemExit("dead letters did not arrive")
        time.sleep(0.05)
    conn.close()


def drain_work(url: str) -> int:
    conn = pika.BlockingConnection(pika.URLParameters(url))
    ch = conn.channel()
    n = ch.queue_purge("work").method.message_count
    conn.close()
    return int(n)


def raw_replay(url: str, n: int, window: int = 500) -> float:
    """Consume ``dlq`` and republish to ``work`` with pipelined confirms; ack after confirm."""
    state: dict[str, Any] = {"published": 0, "done": 0, "tags": {}}
    start = time.perf_counter()

    def on_open(conn: Any) -> None:
        conn.channel(on_open_callback=on_channel)

    def on_channel(ch: Any) -> None:
        state["ch"] = ch
        ch.confirm_delivery(on_confirm, callback=lambda _f: start_consuming(ch))

    def start_consuming(ch: Any) -> None:
        ch.basic_qos(
            prefetch_count=window,
            callback=lambda _f: ch.basic_consume("dlq", on_message),
        )

    def on_message(ch: Any, method: Any, props: Any, body: bytes) -> None:
        ch.basic_publish("", "work", body, props, mandatory=True)
        state["published"] += 1
        state["tags"][state["published"]] = method.delivery_tag

    def on_confirm(frame: Any) -> None:
        method = frame.method
        tags = state["tags"]
        upto = (
            [t for t in tags if t <= method.delivery_tag]
            if method.multiple
            else [method.delivery_tag]
        )
        for seq in upto:
            state["ch"].basic_ack(tags.pop(seq))
            state["done"] += 1
        if state["done"] >= n:
            state["conn"].close()

    conn = pika.SelectConnection(
        pika.URLParameters(url),
        on_open_callback=on_open,
        on_close_callback=lambda c, _r: c.ioloop.stop(),
    )
    state["conn"] = conn
    conn.ioloop.start()
    return time.perf_counter() - start


def reliable_replay(
    url: str, rate: float | None = None, limit: int | None = None, batch_size: int = 500
) -> tuple[float, int]:
    from reliable.dlq_filters import Filter

    start = time.perf_counter()
    report = DeadLetters(url, batch_size=batch_size).replay(
        "dlq", Filter(limit=limit) if limit else None, rate=rate
    )
    return time.perf_counter() - start, report.counts.get("replayed", 0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument(
        "--queue-type", choices=["classic", "quorum"], default="classic"
    )
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=500)
    args = parser.parse_args(argv)
    mgmt = ManagementClient(MGMT, timeout_seconds=120)
    vhost = f"reliable-bench-{uuid.uuid4().hex[:8]}"
    mgmt.create_vhost(vhost)
    mgmt.grant_all(vhost, "guest")
    url = AMQP.rstrip("/") + "/" + quote(vhost, safe="")
    try:
        conn = pika.BlockingConnection(pika.URLParameters(url))
        ch = conn.channel()
        qargs = {"x-queue-type": args.queue_type}
        ch.exchange_declare("dlx", "fanout", durable=True)
        ch.queue_declare("dlq", durable=True, arguments=qargs)
        ch.queue_bind("dlq", "dlx")
        ch.queue_declare(
            "work", durable=True, arguments={**qargs, "x-dead-letter-exchange": "dlx"}
        )
        conn.close()
        n = args.messages
        print(
            f"throughput: {n} dead letters of {len(BODY)} B, {args.queue_type} queues, RabbitMQ via {AMQP.split('@')[-1]}"
        )
        ratios = []
        for round_no in range(1, args.rounds + 1):
            fill(url, n)
            raw_s = raw_replay(url, n, window=args.batch_size)
            assert drain_work(url) == n
            fill(url, n)
            rel_s, replayed = reliable_replay(url, batch_size=args.batch_size)
            assert replayed == n, replayed
            assert drain_work(url) == n
            raw_rate, rel_rate = n / raw_s, n / rel_s
            ratios.append(rel_rate / raw_rate)
            print(
                f"  round {round_no}: raw pika {raw_rate:8.0f} msg/s ({raw_s:.2f}s)   "
                f"reliable {rel_rate:8.0f} msg/s ({rel_s:.2f}s)   ratio {rel_rate / raw_rate:.2f}"
            )
        print(
            f"  ratio reliable/raw: best {max(ratios):.2f}, worst {min(ratios):.2f} (goal >= 0.5)"
        )
        print("rate limiting (asked vs achieved):")
        for rate, count in ((100, 500), (500, 2500), (1000, 5000), (2000, 10000)):
            count = min(count, n)
            fill(url, count)
            secs, replayed = reliable_replay(url, rate=rate)
            drain_work(url)
            achieved = replayed / secs
            print(
                f"  asked {rate:6.0f}/s  achieved {achieved:8.1f}/s  over {replayed} msgs in {secs:.2f}s  "
                f"error {100 * (achieved - rate) / rate:+.1f}% (goal within 5%)"
            )
    finally:
        mgmt.delete_vhost(vhost)
        mgmt.close()


if __name__ == "__main__":
    main()
