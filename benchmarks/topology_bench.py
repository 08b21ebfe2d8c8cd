"""
Plan and apply 1,000 quorum queues with 1,000 bindings in a fresh vhost.

Measures, in one run against the same broker:

* first ``apply`` (declares over AMQP) vs a raw baseline: the same
  exchange, queue and binding declares sent with pika directly;
* a no-op re-plan (read live state over the management API + ``plan``) vs a
  raw baseline: the same management API GETs without any diffing. Goal: the
  no-op plan of 1,000 queues takes at most 2 s.

Run: ``python -m benchmarks.topology_bench`` (RELIABLE_AMQP_URL and
RELIABLE_MANAGEMENT_URL default to the local broker). The vhost it creates is
deleted at the end.

The broker needs more than 1,024 file descriptors (``ulimit -n``): 1,000
quorum queues use up that default, after which RabbitMQ 3.10 cannot accept
new connections (observed: every AMQP handshake to the node timed out until
the queues were deleted). Do not run it against a broker others are using.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from typing import TypeVar

import pika
import pika.exceptions

from reliable import amqp, errors
from reliable.declare import plan
from reliable.declare_apply import apply, read_live_state
from reliable.management import ManagementClient
from reliable.topology import Binding, Exchange, Queue, Topology

T = TypeVar("T")


def timed(fn: Callable[[], T]) -> tuple[T, float]:
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def build(vhost: str, n: int) -> Topology:
    return Topology(
        vhost=vhost,
        exchanges=[Exchange(name="bench.events", type="topic")],
        queues=[
            Queue(name=f"bench.q{i:04d}", delivery_limit=5, message_ttl="1h")
            for i in range(n)
        ],
        bindings=[
            Binding(
                source="bench.events",
                destination=f"bench.q{i:04d}",
                routing_key=f"k.{i}",
            )
            for i in range(n)
        ],
    )


def raw_declare(url: str, topology: Topology) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    for ex in topology.exchanges:
        channel.exchange_declare(ex.name, exchange_type=ex.type, durable=True)
    for q in topology.queues:
        channel.queue_declare(q.name, durable=True, arguments=q.declare_arguments())
    for b in topology.bindings:
        channel.queue_bind(b.destination, b.source, b.routing_key)
    connection.close()


def raw_reads(management: ManagementClient, vhost: str) -> None:
    management.vhost_exists(vhost)
    management.exchanges(vhost)
    management.queue_definitions(vhost)
    management.bindings(vhost)
    management.policies(vhost)
    management.operator_policies(vhost)
    management.broker_version()


def drop_all(url: str, topology: Topology) -> None:
    """Delete the queues one at a time: gentler on a small broker than a vhost delete."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    for q in topology.queues:
        channel.queue_delete(q.name)
    for ex in topology.exchanges:
        channel.exchange_delete(ex.name)
    connection.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--queues", type=int, default=1000)
    args = parser.parse_args(argv)
    amqp_url = os.environ.get(
        "RELIABLE_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F"
    )
    mgmt_url = os.environ.get(
        "RELIABLE_MANAGEMENT_URL", "http://guest:guest@127.0.0.1:15672"
    )
    user = amqp_url.split("//", 1)[1].split(":", 1)[0]
    vhost = f"bench-topology-{uuid.uuid4().hex[:8]}"
    url = amqp.vhost_url(amqp_url, vhost)
    n = args.queues
    topology = build(vhost, n)
    with ManagementClient(mgmt_url, timeout_seconds=120) as management:
        management.create_vhost(vhost)
        management.grant_all(vhost, user)
        try:
            version = management.broker_version()
            # Baseline first, in the same vhost, then removed queue by queue.
            _, raw_apply = timed(lambda: raw_declare(url, topology))
            drop_all(url, topology)
            first_plan, plan_empty = timed(
                lambda: plan(
                    topology, read_live_state(management, vhost), broker_version=version
                )
            )
            _, first_apply = timed(
                lambda: apply(first_plan, amqp_url=amqp_url, management=management)
            )
            # Median of 5 alternating runs: the first request of a run warms caches.
            raw_runs, plan_runs = [], []
            for _ in range(5):
                raw_runs.append(timed(lambda: raw_reads(management, vhost))[1])
                noop, seconds = timed(
                    lambda: plan(
                        topology,
                        read_live_state(management, vhost),
                        broker_version=management.broker_version(),
                    )
                )
                plan_runs.append(seconds)
            raw_get, replan = statistics.median(raw_runs), statistics.median(plan_runs)
            reapply = timed(
                lambda: apply(noop, amqp_url=amqp_url, management=management)
            )
            live = read_live_state(management, vhost)
            _, diff_only = timed(lambda: plan(topology, live, broker_version=version))
            if noop.pending or noop.blocking:
                raise SystemExit("re-plan after apply must be a no-op")

            print(
                f"RabbitMQ {'.'.join(map(str, version))}: {n} quorum queues + {n} bindings + 1 exchange"
            )
            print(f"plan against an empty vhost      {plan_empty:8.3f} s")
            print(f"first apply (reliable)           {first_apply:8.3f} s")
            print(
                f"raw pika declares (baseline)     {raw_apply:8.3f} s   ratio {first_apply / raw_apply:.2f}x"
            )
            print(
                f"no-op re-plan (reads + diff)     {replan:8.3f} s   goal <= 2 s: {'met' if replan <= 2 else 'MISSED'}"
            )
            print(
                f"raw management GETs (baseline)   {raw_get:8.3f} s   ratio {replan / raw_get:.2f}x"
            )
            print(f"diff only (plan(), no I/O)       {diff_only:8.3f} s")
            print(
                f"no-op re-apply (nothing to do)   {reapply[1]:8.3f} s   declared {len(reapply[0].applied)}"
            )
        finally:
            try:
                drop_all(url, topology)
                management.delete_vhost(vhost)
            except (errors.ReliableError, pika.exceptions.AMQPError) as exc:
                print(f"could not clean up vhost {vhost!r}: {exc}", file=sys.stderr)


if __name__ == "__main__":
    main()
