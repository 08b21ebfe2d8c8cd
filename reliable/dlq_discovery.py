"""
Find the dead-letter queues of a vhost from the broker's own configuration.

A queue dead-letters through ``x-dead-letter-exchange`` (a queue argument) or
``dead-letter-exchange`` (its effective policy; for quorum queues the argument
wins, for classic ones too when both are set). The queues bound to such an
exchange are the dead-letter queues; with the default exchange ``""`` the
dead-letter routing key names the queue directly.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from reliable import errors
from reliable.management import ManagementClient

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class DeadLetterQueue:
    name: str
    type: str | None = None
    #: Queues that dead-letter into it.
    sources: list[str] = field(default_factory=list)
    #: Dead-letter exchanges that route into it.
    exchanges: list[str] = field(default_factory=list)
    #: Effective delivery limit of a quorum DLQ (``None``: none known).
    delivery_limit: int | None = None


def _dead_letter_settings(queue: Mapping[str, Any]) -> tuple[str | None, str | None]:
    args = queue.get("arguments") or {}
    policy = queue.get("effective_policy_definition") or {}
    if not isinstance(policy, Mapping):
        policy = {}
    exchange = args.get("x-dead-letter-exchange", policy.get("dead-letter-exchange"))
    key = args.get("x-dead-letter-routing-key", policy.get("dead-letter-routing-key"))
    return (
        str(exchange) if exchange is not None else None,
        str(key) if key is not None else None,
    )


def delivery_limit(
    queue: Mapping[str, Any], *, broker_version: tuple[int, int, int] | None = None
) -> int | None:
    """
    The delivery limit a quorum queue enforces, or ``None`` if it has none.

    Argument and policy: the smaller wins (facts §1.1); from 4.0 a negative
    value disables the limit and no setting means 20.
    """
    if queue.get("type") != "quorum":
        return None
    args = queue.get("arguments") or {}
    policy = queue.get("effective_policy_definition") or {}
    values = [
        int(v)
        for v in (args.get("x-delivery-limit"), policy.get("delivery-limit"))
        if isinstance(v, int) and not isinstance(v, bool)
    ]
    modern = broker_version is not None and broker_version >= (4, 0, 0)
    if modern and any(v < 0 for v in values):
        return None
    if values:
        return min(values)
    return 20 if modern else None


def discover(
    queues: Sequence[Mapping[str, Any]],
    bindings: Sequence[Mapping[str, Any]],
    *,
    broker_version: tuple[int, int, int] | None = None,
) -> list[DeadLetterQueue]:
    """Dead-letter queues found in management API ``queues`` and ``bindings`` listings."""
    by_name = {str(q.get("name")): q for q in queues}
    found: dict[str, DeadLetterQueue] = {}

    def add(dlq: str, source: str, exchange: str) -> None:
        if dlq not in by_name or dlq == source:
            return
        entry = found.setdefault(dlq, DeadLetterQueue(name=dlq))
        if source not in entry.sources:
            entry.sources.append(source)
        if exchange not in entry.exchanges:
            entry.exchanges.append(exchange)

    for queue in queues:
        source = str(queue.get("name"))
        exchange, key = _dead_letter_settings(queue)
        if exchange is None:
            continue
        if exchange == "":
            if key:
                add(key, source, "")
            continue
        for binding in bindings:
            if (
                binding.get("source") == exchange
                and binding.get("destination_type") == "queue"
            ):
                add(str(binding.get("destination")), source, exchange)
    for entry in found.values():
        queue = by_name[entry.name]
        entry.type = queue.get("type")
        entry.delivery_limit = delivery_limit(queue, broker_version=broker_version)
        entry.sources.sort()
    return sorted(found.values(), key=lambda e: e.name)


def read_delivery_limit(management_url: str, vhost: str, queue: str) -> int | None:
    """
    The delivery limit of *queue* as the management API describes it.

    ``None`` when it has none, does not exist, or the API cannot be asked
    (logged): callers then treat the limit as unknown.
    """
    try:
        with ManagementClient(management_url) as mgmt:
            info = mgmt.queue(vhost, queue)
            version = mgmt.broker_version() if info else None
    except errors.ManagementAPIError as exc:
        logger.warning("cannot read the delivery limit of %r: %s", queue, exc)
        return None
    return delivery_limit(info, broker_version=version) if info else None
