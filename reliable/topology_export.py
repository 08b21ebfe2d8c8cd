"""
Turn a vhost's live state into a `reliable.topology.Topology` (``topology export``).

Typed fields are filled from the ``x-*`` arguments they render, so that
exporting, applying the file to an empty vhost and planning again shows no
changes. Objects the file format cannot express (built-ins, Celery's own
objects, client-owned exclusive or auto-delete ones, arguments refused by
the models) are skipped and reported.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from reliable.declare import LiveState, is_ignored_exchange, is_ignored_queue
from reliable.declare_rules import binding_from_live
from reliable.topology import Exchange, Policy, Queue, Topology

T = TypeVar("T")
_MAX_AGE = re.compile(r"^(\d+)(Y|M|D|h|m|s)$")
_MAX_AGE_SECONDS = {
    "Y": 365 * 86400,
    "M": 30 * 86400,
    "D": 86400,
    "h": 3600,
    "m": 60,
    "s": 1,
}
_FIELDS = {
    "x-overflow": "overflow",
    "x-delivery-limit": "delivery_limit",
    "x-message-ttl": "message_ttl",
    "x-expires": "expires",
    "x-max-length": "max_length",
    "x-max-length-bytes": "max_length_bytes",
    "x-max-priority": "max_priority",
    "x-single-active-consumer": "single_active_consumer",
}


def queue_from_live(live: Mapping[str, Any]) -> Queue:
    args = dict(live.get("arguments") or {})
    data: dict[str, Any] = {
        "name": live["name"],
        "type": args.pop("x-queue-type", None) or live.get("type") or "classic",
        "durable": bool(live.get("durable", True)),
        "exclusive": bool(live.get("exclusive")),
        "auto_delete": bool(live.get("auto_delete")),
    }
    if "x-dead-letter-exchange" in args:
        dead: dict[str, Any] = {"exchange": args.pop("x-dead-letter-exchange")}
        if "x-dead-letter-routing-key" in args:
            dead["routing_key"] = args.pop("x-dead-letter-routing-key")
        if "x-dead-letter-strategy" in args:
            dead["strategy"] = args.pop("x-dead-letter-strategy")
        data["dead_letter"] = dead
    for key, name in _FIELDS.items():
        if key in args:
            data[name] = args.pop(key)
    if "x-max-age" in args and (match := _MAX_AGE.match(str(args["x-max-age"]))):
        args.pop("x-max-age")
        data["max_age"] = int(match[1]) * _MAX_AGE_SECONDS[match[2]] * 1000
    data["arguments"] = args
    return Queue.model_validate(data)


def exchange_from_live(live: Mapping[str, Any]) -> Exchange:
    args = dict(live.get("arguments") or {})
    data: dict[str, Any] = {
        "name": live["name"],
        "type": live.get("type", "direct"),
        "durable": bool(live.get("durable", True)),
        "auto_delete": bool(live.get("auto_delete")),
        "internal": bool(live.get("internal")),
    }
    if "alternate-exchange" in args:
        data["alternate_exchange"] = args.pop("alternate-exchange")
    data["arguments"] = args
    return Exchange.model_validate(data)


def policy_from_live(live: Mapping[str, Any]) -> Policy:
    return Policy(
        name=str(live["name"]),
        pattern=str(live["pattern"]),
        apply_to=live.get("apply-to", "all"),
        priority=int(live.get("priority", 0)),
        definition=dict(live.get("definition") or {}),
    )


def _convert(
    items: Iterable[Mapping[str, Any]],
    build: Callable[[Mapping[str, Any]], T],
    kind: str,
    skipped: list[str],
) -> list[T]:
    out = []
    for item in items:
        try:
            out.append(build(item))
        except ValueError as exc:  # pydantic's ValidationError is a ValueError
            skipped.append(f"{kind} {item.get('name')!r}: {_first_line(exc)}")
    return out


def export_topology(live: LiveState) -> tuple[Topology, list[str]]:
    """Return the topology of *live* and a note for every object left out."""
    skipped: list[str] = []
    exchanges = _convert(
        (e for e in live.exchanges if not is_ignored_exchange(e)),
        exchange_from_live,
        "exchange",
        skipped,
    )
    queues = _convert(
        (q for q in live.queues if not is_ignored_queue(q)),
        queue_from_live,
        "queue",
        skipped,
    )
    kept_exchanges = {e.name for e in exchanges}
    kept = {"exchange": kept_exchanges, "queue": {q.name for q in queues}}

    def wanted(b: Mapping[str, Any]) -> bool:
        source = str(b.get("source", ""))
        dest_kind = "exchange" if b.get("destination_type") == "exchange" else "queue"
        return (source in kept_exchanges or source.startswith("amq.")) and str(
            b.get("destination", "")
        ) in kept[dest_kind]

    bindings = _convert(
        (b for b in live.bindings if wanted(b)), binding_from_live, "binding", skipped
    )
    policies = _convert(live.policies, policy_from_live, "policy", skipped)
    topology = Topology(
        vhost=live.vhost,
        exchanges=sorted(exchanges, key=lambda e: e.name),
        queues=sorted(queues, key=lambda q: q.name),
        bindings=bindings,
        policies=sorted(policies, key=lambda p: p.name),
    )
    return topology, skipped


def _first_line(exc: ValueError) -> str:
    lines = [line for line in str(exc).splitlines() if line and not line[0].isdigit()]
    return lines[1].strip() if len(lines) > 1 else str(exc).splitlines()[0]
