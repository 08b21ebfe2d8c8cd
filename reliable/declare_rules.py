"""
Comparison and broker-version rules behind `reliable.declare.plan`.

Pure functions: turn models and management-API records into comparable
property maps, say how an immutable difference can be resolved, apply
version rules, and work out effective settings (queue arguments + user
policy + operator policy, by RabbitMQ's precedence).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from reliable.topology import Binding, Exchange, Policy, Queue, applies_to

Version = tuple[int, int, int]

#: Queue argument -> policy key, for settings a policy can also carry.
POLICY_EQUIVALENT = {
    "x-message-ttl": "message-ttl",
    "x-expires": "expires",
    "x-max-length": "max-length",
    "x-max-length-bytes": "max-length-bytes",
    "x-overflow": "overflow",
    "x-dead-letter-exchange": "dead-letter-exchange",
    "x-dead-letter-routing-key": "dead-letter-routing-key",
    "x-dead-letter-strategy": "dead-letter-strategy",
    "x-delivery-limit": "delivery-limit",
}
_NUMERIC = frozenset(
    {"message-ttl", "expires", "max-length", "max-length-bytes", "delivery-limit"}
)
#: Operator policies may only set these (RabbitMQ docs, "Operator Policies").
_OPERATOR_KEYS = _NUMERIC | {"max-in-memory-length", "max-in-memory-bytes"}


def _norm(value: Any) -> Any:
    # The API returns JSON numbers; 5 and 5.0 are the same setting.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def differences(expected: Mapping[str, Any], actual: Mapping[str, Any]) -> list[str]:
    keys = sorted(set(expected) | set(actual))
    return [k for k in keys if _norm(expected.get(k)) != _norm(actual.get(k))]


def _flatten(prefix: str, args: Mapping[str, Any]) -> dict[str, Any]:
    return {f"{prefix}{k}": _norm(v) for k, v in args.items()}


# -- exchanges ----------------------------------------------------------------------


def exchange_props(ex: Exchange) -> dict[str, Any]:
    return {
        "type": ex.type,
        "durable": ex.durable,
        "auto_delete": ex.auto_delete,
        "internal": ex.internal,
        **_flatten("arguments.", ex.declare_arguments()),
    }


def live_exchange_props(live: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "type": live.get("type"),
        "durable": bool(live.get("durable")),
        "auto_delete": bool(live.get("auto_delete")),
        "internal": bool(live.get("internal")),
        **_flatten("arguments.", live.get("arguments") or {}),
    }


def exchange_remedy(name: str) -> str:
    return (
        f"an exchange cannot change in place: declare a new exchange with these settings "
        f"and move the bindings to it, or delete {name!r} yourself (its bindings go with it) "
        "and re-run apply; reliable never deletes it for you"
    )


# -- queues ---------------------------------------------------------------------------


def queue_props(queue: Queue) -> dict[str, Any]:
    return {
        "durable": queue.durable,
        "exclusive": queue.exclusive,
        "auto_delete": queue.auto_delete,
        **_flatten("arguments.", queue.declare_arguments()),
    }


def live_queue_props(live: Mapping[str, Any]) -> dict[str, Any]:
    args = dict(live.get("arguments") or {})
    # A queue declared without x-queue-type is a classic queue (checked on 3.10.8:
    # redeclaring it with x-queue-type=classic is accepted as equivalent).
    args.setdefault("x-queue-type", live.get("type") or "classic")
    return {
        "durable": bool(live.get("durable")),
        "exclusive": bool(live.get("exclusive")),
        "auto_delete": bool(live.get("auto_delete")),
        **_flatten("arguments.", args),
    }


def queue_remedy(queue: Queue, diff: Sequence[str], actual: Mapping[str, Any]) -> str:
    new = f"{queue.name}.v2"
    steps = (
        f"queue type and arguments are fixed when a queue is declared; to migrate without "
        f"losing messages: declare {new!r} with the new settings, bind it like "
        f"{queue.name!r}, unbind {queue.name!r}, move the messages with "
        f"'reliable dlq move {queue.name} {new}' (or a shovel), then delete "
        f"{queue.name!r} yourself; reliable never deletes a queue to change it"
    )
    added = [
        d.removeprefix("arguments.")
        for d in diff
        if d.removeprefix("arguments.") in POLICY_EQUIVALENT and d not in actual
    ]
    if added and len(added) == len(diff):
        keys = ", ".join(POLICY_EQUIVALENT[a] for a in added)
        steps += (
            f". Or keep the queue: drop {', '.join(added)} from the file and set {keys} "
            f"with a policy (pattern '^{re.escape(queue.name)}$'), which applies in place"
        )
    return steps


def queue_version_rules(queue: Queue, version: Version) -> tuple[list[str], list[str]]:
    """Return (unsupported, warnings) for declaring *queue* on a broker of *version*."""
    shown = ".".join(map(str, version))
    unsupported: list[str] = []
    warnings: list[str] = []
    args = queue.declare_arguments()
    if queue.type == "stream" and version < (3, 9, 0):
        unsupported.append(f"streams need RabbitMQ 3.9+, the broker runs {shown}")
    if queue.type == "quorum":
        if version < (3, 10, 0):
            if queue.message_ttl is not None:
                unsupported.append(
                    f"quorum queues take message_ttl from 3.10, the broker runs {shown}"
                )
            if "x-dead-letter-strategy" in args:
                unsupported.append(
                    f"dead_letter.strategy needs RabbitMQ 3.10+, the broker runs {shown}"
                )
        if queue.delivery_limit is None and version < (4, 0, 0):
            warnings.append(
                f"no delivery_limit: on RabbitMQ {shown} a message that keeps failing "
                "(requeued) is redelivered forever; set delivery_limit"
            )
        elif queue.delivery_limit is None:
            tail = (
                "dead-lettered" if queue.dead_letter else "DROPPED (no dead_letter set)"
            )
            warnings.append(
                f"RabbitMQ {shown} applies a default delivery limit of 20: past it messages are {tail}"
            )
        if queue.delivery_limit == -1 and version < (4, 0, 0):
            unsupported.append(
                f"delivery_limit -1 (unlimited) needs RabbitMQ 4.0+, the broker runs {shown}"
            )
    unsupported += _argument_version_rules(args, version, warnings)
    return unsupported, warnings


def _argument_version_rules(
    args: Mapping[str, Any], version: Version, warnings: list[str]
) -> list[str]:
    shown = ".".join(map(str, version))
    unsupported = []
    new_43 = {
        "x-consumer-disconnected-timeout",
        "x-delayed-retry-type",
        "x-delayed-retry-min",
        "x-delayed-retry-max",
    }
    for key in sorted(new_43 & set(args)):
        if version < (4, 3, 0):
            unsupported.append(
                f"argument {key!r} needs RabbitMQ 4.3+, the broker runs {shown}"
            )
    for key in sorted({"x-max-in-memory-length", "x-max-in-memory-bytes"} & set(args)):
        if version >= (3, 10, 0):
            warnings.append(f"{key!r} is ignored since RabbitMQ 3.10")
    return unsupported


# -- bindings and policies -----------------------------------------------------------


def live_binding_key(live: Mapping[str, Any]) -> tuple[Any, ...]:
    args = live.get("arguments") or {}
    return (
        str(live.get("source", "")),
        str(live.get("destination_type", "queue")),
        str(live.get("destination", "")),
        str(live.get("routing_key", "")),
        tuple(sorted((k, repr(_norm(v))) for k, v in args.items())),
    )


def describe_live_binding(live: Mapping[str, Any]) -> str:
    arrow = "=>" if live.get("destination_type") == "exchange" else "->"
    return f"{live.get('source')} {arrow} {live.get('destination')} [{live.get('routing_key', '')}]"


def binding_from_live(live: Mapping[str, Any]) -> Binding:
    return Binding(
        source=str(live["source"]),
        destination=str(live["destination"]),
        destination_type="exchange"
        if live.get("destination_type") == "exchange"
        else "queue",
        routing_key=str(live.get("routing_key", "")),
        arguments=dict(live.get("arguments") or {}),
    )


def policy_props(policy: Policy) -> dict[str, Any]:
    return {
        "pattern": policy.pattern,
        "apply_to": policy.apply_to,
        "priority": policy.priority,
        **_flatten("definition.", policy.definition),
    }


def live_policy_props(live: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "pattern": live.get("pattern"),
        "apply_to": live.get("apply-to", "all"),
        "priority": live.get("priority", 0),
        **_flatten("definition.", live.get("definition") or {}),
    }


def policy_version_problems(policy: Policy, version: Version) -> list[str]:
    shown = ".".join(map(str, version))
    out = []
    if policy.apply_to in ("classic_queues", "quorum_queues", "streams") and version < (
        3,
        12,
        0,
    ):
        out.append(
            f"apply_to {policy.apply_to!r} needs RabbitMQ 3.12+, the broker runs {shown}"
        )
    mirroring = sorted(k for k in policy.definition if k.startswith("ha-"))
    if mirroring and version >= (4, 0, 0):
        out.append(
            f"classic mirroring ({', '.join(mirroring)}) was removed in RabbitMQ 4.0"
        )
    return out


class PolicyIndex:
    """The policies that will apply after ``apply``: the file's, plus live ones it does not replace."""

    def __init__(
        self,
        desired: Sequence[Policy],
        live: Sequence[Mapping[str, Any]],
        operator: Sequence[Mapping[str, Any]],
    ) -> None:
        names = {p.name for p in desired}
        self._user: list[_PolicyRow] = [
            (p.name, p.pattern, str(p.apply_to), p.priority, dict(p.definition))
            for p in desired
        ]
        self._user += [_live_policy(p) for p in live if p.get("name") not in names]
        self._operator = [_live_policy(p) for p in operator]

    @staticmethod
    def _pick(
        policies: list[tuple[str, str, str, int, dict[str, Any]]], queue: Queue
    ) -> tuple[str, dict[str, Any]] | None:
        # RabbitMQ applies at most one policy per object: the highest priority match.
        best = None
        for name, pattern, apply_to, priority, definition in policies:
            try:
                hit = re.search(pattern, queue.name)
            except re.error:
                continue
            if (
                hit
                and applies_to(apply_to, "queue", queue.type)
                and (best is None or priority > best[0])
            ):
                best = (priority, name, definition)
        return (best[1], best[2]) if best else None

    def effective(self, queue: Queue, version: Version) -> dict[str, dict[str, Any]]:
        """Settings whose effective value differs from what the file's arguments say."""
        args = queue.declare_arguments()
        mine = {
            POLICY_EQUIVALENT[k]: v for k, v in args.items() if k in POLICY_EQUIVALENT
        }
        user = self._pick(self._user, queue)
        oper = self._pick(self._operator, queue)
        out: dict[str, dict[str, Any]] = {}
        keys = (
            set(mine)
            | (set(user[1]) if user else set())
            | (set(oper[1]) & _OPERATOR_KEYS if oper else set())
        )
        for key in sorted(keys):
            value, source = _merge(queue.type, key, mine.get(key), user, version)
            if oper and key in _OPERATOR_KEYS and key in oper[1]:
                op_value = oper[1][key]
                if value is None or (
                    isinstance(op_value, int | float) and op_value < value
                ):
                    value, source = op_value, f"operator policy {oper[0]!r}"
            if value is not None and _norm(value) != _norm(mine.get(key)):
                out[key] = {"file": mine.get(key), "effective": value, "source": source}
        return out


_PolicyRow = tuple[str, str, str, int, dict[str, Any]]


def _live_policy(p: Mapping[str, Any]) -> _PolicyRow:
    return (
        str(p.get("name", "")),
        str(p.get("pattern", "")),
        str(p.get("apply-to", "all")),
        int(p.get("priority", 0)),
        dict(p.get("definition") or {}),
    )


def _merge(
    qtype: str,
    key: str,
    arg: Any,
    user: tuple[str, dict[str, Any]] | None,
    version: Version,
) -> tuple[Any, str]:
    if user is None or key not in user[1]:
        return arg, "arguments"
    pol = user[1][key]
    source = f"policy {user[0]!r}"
    if arg is None:
        return pol, source
    if qtype == "quorum":
        # Quorum queues: the stricter of argument and policy for limits;
        # the policy's overflow; the argument's dead-lettering (facts §1.1).
        if key in (
            "max-length",
            "max-length-bytes",
            "message-ttl",
            "delivery-limit",
        ) or (key == "expires" and version >= (4, 0, 0)):
            return (pol, source) if pol < arg else (arg, "arguments")
        if key in ("overflow",) or (key == "expires" and version < (4, 0, 0)):
            return pol, source
    return arg, "arguments"
