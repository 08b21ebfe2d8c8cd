"""Checked by mypy only, never run: the topology API as users write it."""

from __future__ import annotations

import kombu

from reliable.declare import Plan, plan
from reliable.declare_apply import ApplyReport, apply, read_live_state
from reliable.management import ManagementClient
from reliable.tasks import celery_queues
from reliable.topology import Queue, Topology
from reliable.topology_file import dump_topology, load_topology


def deploy(path: str, amqp_url: str, management_url: str) -> ApplyReport | None:
    topology: Topology = load_topology(path)
    with ManagementClient(management_url) as mgmt:
        p: Plan = plan(
            topology,
            read_live_state(mgmt, topology.vhost),
            broker_version=mgmt.broker_version(),
        )
        if p.blocking:
            return None
        return apply(p, amqp_url=amqp_url, management=mgmt, prune=False)


queues: list[kombu.Queue] = celery_queues(Topology(queues=[Queue(name="work")]))
text: str = dump_topology(Topology())
