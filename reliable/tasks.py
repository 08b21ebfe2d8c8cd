"""
The Celery integration: the only module that imports celery and kombu.
"""

from __future__ import annotations

from kombu import Exchange as KombuExchange
from kombu import Queue as KombuQueue

from reliable.topology import Topology

# -- topology -> Celery task_queues ---------------------------------------------------


def celery_queues(topology: Topology) -> list[KombuQueue]:
    """
    Return kombu queues that declare exactly what ``reliable topology apply`` declared.

    Use them as Celery's ``task_queues``. Each queue carries the same
    ``queue_arguments`` as the topology (``x-queue-type`` included, so Celery's
    quorum-queue detection turns global QoS off and the broker does not close
    the connection with 540), so a worker's redeclaration is equivalent and
    never meets ``406 PRECONDITION_FAILED``.

    A queue's first binding from an exchange becomes its kombu exchange and
    routing key (what Celery publishes with); the exchange is marked
    ``no_declare`` because ``apply`` owns it. A queue without bindings gets
    the default exchange, for which Celery substitutes its own default exchange
    (``task_default_exchange``, ``celery``) and binds the queue to it.

    .. versionadded:: 0.1.0
    """
    exchanges = {e.name: e for e in topology.exchanges}
    out = []
    for queue in topology.queues:
        binding = next(
            (
                b
                for b in topology.bindings
                if b.destination_type == "queue" and b.destination == queue.name
            ),
            None,
        )
        if binding is None:
            exchange = KombuExchange("", type="direct", no_declare=True)
            routing_key = queue.name
        else:
            declared = exchanges.get(binding.source)
            exchange = KombuExchange(
                binding.source,
                type=declared.type if declared else _builtin_type(binding.source),
                durable=declared.durable if declared else True,
                auto_delete=declared.auto_delete if declared else False,
                arguments=declared.declare_arguments() if declared else None,
                no_declare=True,
            )
            routing_key = binding.routing_key
        out.append(
            KombuQueue(
                queue.name,
                exchange=exchange,
                routing_key=routing_key,
                durable=queue.durable,
                exclusive=queue.exclusive,
                auto_delete=queue.auto_delete,
                queue_arguments=queue.declare_arguments(),
                binding_arguments=dict(binding.arguments) if binding else None,
            )
        )
    return out


def _builtin_type(name: str) -> str:
    # amq.topic, amq.fanout, amq.headers, amq.match (headers), amq.direct.
    kind = name.removeprefix("amq.")
    return {"match": "headers"}.get(
        kind, kind if kind in ("topic", "fanout", "headers") else "direct"
    )
