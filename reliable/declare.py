"""
Plan a topology against what the broker has: a pure function over recorded state.

``plan(topology, live, broker_version=...)`` compares each object and says
what ``apply`` would do: create, leave unchanged, update in place (policies),
or stop at a conflict (queue type and x-arguments are fixed at declaration;
the way out is a migration, never a silent delete). Objects on the broker but
not in the files are listed as unmanaged; Celery's own objects, the default
exchange, ``amq.*`` and client-owned (exclusive, auto-delete) objects are left
out. ``apply`` lives in `reliable.declare_apply`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from reliable import declare_rules, errors
from reliable.topology import Binding, Exchange, Policy, Queue, Topology

Kind = Literal["vhost", "exchange", "queue", "binding", "policy"]
Action = Literal[
    "create", "unchanged", "update", "conflict", "unmanaged", "unsupported"
]
Version = tuple[int, int, int]

#: Celery's own objects: never reported as unmanaged, never pruned, unless a file declares them.
_CELERY = re.compile(
    r"^(celery|celeryev|celery\.pidbox|reply\.celery\.pidbox|celery_delayed_delivery"
    r"|celery_delayed_\d+|celeryev\..*|.*\.pidbox)$"
)


@dataclass(frozen=True, slots=True)
class LiveState:
    """What the management API reported for one vhost (``exists=False``: no such vhost)."""

    vhost: str
    exists: bool = True
    exchanges: Sequence[Mapping[str, Any]] = ()
    queues: Sequence[Mapping[str, Any]] = ()
    bindings: Sequence[Mapping[str, Any]] = ()
    policies: Sequence[Mapping[str, Any]] = ()
    operator_policies: Sequence[Mapping[str, Any]] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Change:
    """One object and what apply would do with it."""

    kind: Kind
    name: str
    action: Action
    reason: str = ""
    expected: Mapping[str, Any] = field(default_factory=dict)
    actual: Mapping[str, Any] = field(default_factory=dict)
    remedy: str = ""
    #: Settings where arguments + policy + operator policy differ from the file.
    effective: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    #: The model to declare (create/update), or the live record (unmanaged).
    target: Exchange | Queue | Binding | Policy | None = None
    live: Mapping[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "kind": self.kind,
            "name": self.name,
            "action": self.action,
        }
        for key in ("reason", "expected", "actual", "remedy", "effective"):
            if value := getattr(self, key):
                out[key] = dict(value) if isinstance(value, Mapping) else value
        if self.warnings:
            out["warnings"] = list(self.warnings)
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    """Every change for one vhost, in apply order."""

    vhost: str
    broker_version: Version
    changes: tuple[Change, ...]

    def by_action(self, *actions: Action) -> list[Change]:
        return [c for c in self.changes if c.action in actions]

    @property
    def blocking(self) -> list[Change]:
        """Conflicts and unsupported objects: apply refuses to run while any exist."""
        return self.by_action("conflict", "unsupported")

    @property
    def pending(self) -> list[Change]:
        return self.by_action("create", "update")

    @property
    def warnings(self) -> list[str]:
        return [f"{c.kind} {c.name!r}: {w}" for c in self.changes for w in c.warnings]

    def summary(self) -> dict[str, int]:
        counts = dict.fromkeys(
            ("create", "update", "unchanged", "conflict", "unsupported", "unmanaged"), 0
        )
        for c in self.changes:
            counts[c.action] += 1
        return counts

    def to_dict(self) -> dict[str, Any]:
        return {
            "vhost": self.vhost,
            "broker_version": ".".join(map(str, self.broker_version)),
            "summary": self.summary(),
            "changes": [c.to_dict() for c in self.changes],
        }


def is_ignored_exchange(live: Mapping[str, Any]) -> bool:
    name = str(live.get("name", ""))
    return (
        name == ""
        or name.startswith("amq.")
        or bool(_CELERY.match(name))
        or bool(live.get("auto_delete"))
    )


def is_ignored_queue(live: Mapping[str, Any]) -> bool:
    name = str(live.get("name", ""))
    return (
        bool(live.get("exclusive"))
        or bool(live.get("auto_delete"))
        or name.startswith("amq.")
        or bool(_CELERY.match(name))
    )


def plan(topology: Topology, live: LiveState, *, broker_version: Version) -> Plan:
    """
    Compare *topology* with *live* and return the `Plan` (no I/O).

    Raises:
        ValueError: *topology* and *live* describe different vhosts.
        reliable.errors.TopologyError: *topology* references objects it does
            not declare, or declares one twice (files are checked on load).
    """
    problems = topology.problems()
    if problems:
        listing = "; ".join(f"{_path(loc)}: {msg}" for loc, msg in problems)
        msg = f"the topology is inconsistent: {listing}; fix it before planning"
        raise errors.TopologyError(msg)
    if topology.vhost != live.vhost:
        msg = f"topology is for vhost {topology.vhost!r}, live state for {live.vhost!r}"
        raise ValueError(msg)
    changes: list[Change] = []
    if not live.exists:
        changes.append(
            Change(
                kind="vhost",
                name=topology.vhost,
                action="create",
                reason="no such vhost",
            )
        )
    policies = declare_rules.PolicyIndex(
        topology.policies, live.policies, live.operator_policies
    )
    changes += _exchanges(topology, live)
    changes += _queues(topology, live, broker_version, policies)
    changes += _bindings(topology, live)
    changes += _policies(topology, live, broker_version)
    return Plan(
        vhost=topology.vhost, broker_version=broker_version, changes=tuple(changes)
    )


def _path(loc: Sequence[str | int]) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")


def _exchanges(topology: Topology, live: LiveState) -> list[Change]:
    found = {str(e["name"]): e for e in live.exchanges}
    out = []
    for ex in topology.exchanges:
        expected = declare_rules.exchange_props(ex)
        current = found.pop(ex.name, None)
        if current is None:
            out.append(
                Change(
                    kind="exchange",
                    name=ex.name,
                    action="create",
                    expected=expected,
                    target=ex,
                )
            )
            continue
        actual = declare_rules.live_exchange_props(current)
        diff = declare_rules.differences(expected, actual)
        if diff:
            out.append(
                Change(
                    kind="exchange",
                    name=ex.name,
                    action="conflict",
                    reason=f"differs in {', '.join(diff)}",
                    expected={k: expected.get(k) for k in diff},
                    actual={k: actual.get(k) for k in diff},
                    remedy=declare_rules.exchange_remedy(ex.name),
                    target=ex,
                )
            )
        else:
            out.append(
                Change(kind="exchange", name=ex.name, action="unchanged", target=ex)
            )
    for name, current in sorted(found.items()):
        if not is_ignored_exchange(current):
            out.append(
                Change(
                    kind="exchange",
                    name=name,
                    action="unmanaged",
                    actual=declare_rules.live_exchange_props(current),
                    live=current,
                )
            )
    return out


def _queues(
    topology: Topology,
    live: LiveState,
    version: Version,
    policies: declare_rules.PolicyIndex,
) -> list[Change]:
    found = {str(q["name"]): q for q in live.queues}
    out = []
    for queue in topology.queues:
        expected = declare_rules.queue_props(queue)
        current = found.pop(queue.name, None)
        unsupported, warnings = declare_rules.queue_version_rules(queue, version)
        effective = policies.effective(queue, version)
        common: dict[str, Any] = {
            "kind": "queue",
            "name": queue.name,
            "target": queue,
            "warnings": tuple(warnings),
            "effective": effective,
        }
        if current is None:
            if unsupported:
                out.append(
                    Change(
                        action="unsupported",
                        reason="; ".join(unsupported),
                        expected=expected,
                        **common,
                    )
                )
            else:
                out.append(Change(action="create", expected=expected, **common))
            continue
        actual = declare_rules.live_queue_props(current)
        diff = declare_rules.differences(expected, actual)
        if diff:
            out.append(
                Change(
                    action="conflict",
                    reason=f"fixed at declaration, differs in {', '.join(diff)}",
                    expected={k: expected.get(k) for k in diff},
                    actual={k: actual.get(k) for k in diff},
                    remedy=declare_rules.queue_remedy(queue, diff, actual),
                    **common,
                )
            )
        else:
            out.append(Change(action="unchanged", **common))
    for name, current in sorted(found.items()):
        if not is_ignored_queue(current):
            props = declare_rules.live_queue_props(current)
            props["messages"] = current.get("messages")
            out.append(
                Change(
                    kind="queue",
                    name=name,
                    action="unmanaged",
                    actual=props,
                    live=current,
                )
            )
    return out


def _bindings(topology: Topology, live: LiveState) -> list[Change]:
    ignored = {str(e["name"]) for e in live.exchanges if is_ignored_exchange(e)}
    ignored |= {str(q["name"]) for q in live.queues if is_ignored_queue(q)}
    managed = {e.name for e in topology.exchanges} | {q.name for q in topology.queues}
    current: dict[Any, Mapping[str, Any]] = {}
    for b in live.bindings:
        if not b.get("source"):
            continue  # the default exchange's implicit binding of every queue
        current[declare_rules.live_binding_key(b)] = b
    out = []
    for binding in topology.bindings:
        action: Action = "unchanged" if current.pop(binding.key, None) else "create"
        out.append(
            Change(
                kind="binding", name=binding.describe(), action=action, target=binding
            )
        )
    for key, b in current.items():
        ends = {str(b["source"]), str(b["destination"])} - managed
        if ends & ignored or any(_CELERY.match(n) for n in ends):
            continue
        out.append(
            Change(
                kind="binding",
                name=declare_rules.describe_live_binding(b),
                action="unmanaged",
                actual={"routing_key": key[3]},
                live=b,
            )
        )
    return out


def _policies(topology: Topology, live: LiveState, version: Version) -> list[Change]:
    found = {str(p["name"]): p for p in live.policies}
    out = []
    for policy in topology.policies:
        expected = declare_rules.policy_props(policy)
        current = found.pop(policy.name, None)
        problems = declare_rules.policy_version_problems(policy, version)
        if problems and (
            current is None
            or declare_rules.differences(
                expected, declare_rules.live_policy_props(current)
            )
        ):
            out.append(
                Change(
                    kind="policy",
                    name=policy.name,
                    action="unsupported",
                    reason="; ".join(problems),
                    expected=expected,
                    target=policy,
                )
            )
            continue
        if current is None:
            out.append(
                Change(
                    kind="policy",
                    name=policy.name,
                    action="create",
                    expected=expected,
                    target=policy,
                )
            )
            continue
        actual = declare_rules.live_policy_props(current)
        diff = declare_rules.differences(expected, actual)
        action: Action = "update" if diff else "unchanged"
        out.append(
            Change(
                kind="policy",
                name=policy.name,
                action=action,
                reason=f"changes {', '.join(diff)} in place" if diff else "",
                expected={k: expected[k] for k in diff},
                actual={k: actual.get(k) for k in diff},
                target=policy,
            )
        )
    for name, current in sorted(found.items()):
        out.append(
            Change(
                kind="policy",
                name=name,
                action="unmanaged",
                actual=declare_rules.live_policy_props(current),
                live=current,
            )
        )
    return out
