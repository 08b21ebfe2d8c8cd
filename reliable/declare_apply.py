"""
Read the broker's live state and apply a `reliable.declare.Plan` to it.

``apply`` refuses the whole plan while any object is in conflict or
unsupported (nothing is applied), then declares in dependency order:
exchanges, queues, bindings over AMQP, policies over the management API.
Only ``create``/``update`` changes touch the broker, so a re-run is a no-op.
If the broker fails part-way, `reliable.errors.ApplyIncomplete` lists what
was applied; running apply again converges.

``prune`` deletes unmanaged bindings, queues and exchanges, never a queue
that holds messages or has consumers unless forced. The message count comes
from a passive ``queue.declare`` (read from the queue itself): management
statistics lag for quorum queues (rabbitmq-celery-facts §0.11).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from reliable import amqp, errors
from reliable.declare import Change, LiveState, Plan
from reliable.management import ManagementClient
from reliable.topology import Binding, Exchange, Policy, Queue

logger = logging.getLogger(__name__)

Progress = Callable[[int], None]


def read_live_state(management: ManagementClient, vhost: str) -> LiveState:
    """Read exchanges, queues, bindings, policies and operator policies of *vhost*."""
    if not management.vhost_exists(vhost):
        return LiveState(vhost=vhost, exists=False)
    return LiveState(
        vhost=vhost,
        exchanges=management.exchanges(vhost),
        queues=management.queue_definitions(vhost),
        bindings=management.bindings(vhost),
        policies=management.policies(vhost),
        operator_policies=management.operator_policies(vhost),
    )


@dataclass(slots=True)
class ApplyReport:
    """What apply did, in order."""

    applied: list[str] = field(default_factory=list)
    pruned: list[str] = field(default_factory=list)
    #: Unmanaged queues not deleted because they hold messages or have consumers.
    kept: list[str] = field(default_factory=list)


def _blocked(plan: Plan) -> errors.ReliableError:
    listing = "; ".join(
        f"{c.kind} {c.name!r}: {c.action} ({c.reason})" for c in plan.blocking
    )
    msg = (
        f"{len(plan.blocking)} object(s) cannot be applied, so nothing was applied: "
        f"{listing}; see 'reliable topology plan' for the way out"
    )
    conflicts = plan.by_action("conflict")
    if conflicts:
        first = conflicts[0]
        return errors.TopologyConflict(
            msg,
            entity=f"{first.kind} {first.name!r}",
            expected=first.expected,
            actual=first.actual,
        )
    return errors.TopologyError(msg)


def prune_candidates(plan: Plan) -> list[Change]:
    """Unmanaged bindings, queues and exchanges, in the order prune removes them."""
    order = {"binding": 0, "queue": 1, "exchange": 2}
    items = [c for c in plan.by_action("unmanaged") if c.kind in order]
    return sorted(items, key=lambda c: order[c.kind])


def apply(
    plan: Plan,
    *,
    amqp_url: str,
    management: ManagementClient,
    prune: bool = False,
    force: bool = False,
    progress: Progress | None = None,
) -> ApplyReport:
    """
    Apply *plan* to the broker.

    Args:
        amqp_url: Any vhost of the broker; the plan's vhost replaces it.
        prune: Also delete unmanaged bindings, queues and exchanges.
        force: With *prune*, delete queues even if they hold messages.

    Raises:
        reliable.errors.TopologyConflict: The plan has conflicts (nothing applied).
        reliable.errors.TopologyError: The plan needs a newer broker (nothing applied).
        reliable.errors.ApplyIncomplete: The broker failed part-way.
    """
    if plan.blocking:
        raise _blocked(plan)
    report = ApplyReport()
    advance = progress or (lambda _n: None)
    url = amqp.vhost_url(amqp_url, plan.vhost)
    try:
        if any(c.kind == "vhost" and c.action == "create" for c in plan.changes):
            management.create_vhost(plan.vhost)
            management.grant_all(plan.vhost, urlsplit(amqp_url).username or "guest")
            report.applied.append(f"created vhost {plan.vhost!r}")
        with amqp.open_channel(url) as channel:
            for change in plan.changes:
                if change.action in ("create", "update") and change.kind != "vhost":
                    _declare(change, channel, management, plan.vhost)
                    report.applied.append(
                        f"{change.action}d {change.kind} {change.name}"
                    )
                    advance(1)
            if prune:
                _prune(plan, channel, force=force, report=report)
    except errors.ApplyIncomplete:
        raise
    except errors.ReliableError as exc:
        done = ", ".join(report.applied + report.pruned) or "nothing"
        msg = f"apply stopped part-way: {exc}; applied before the failure: {done}; re-run apply to converge"
        raise errors.ApplyIncomplete(
            msg,
            applied=report.applied + report.pruned,
            failed=str(exc),
            reply_code=getattr(exc, "reply_code", None),
        ) from exc
    for line in report.applied + report.pruned:
        logger.info(
            "%s", line, extra={"action": "topology_applied", "vhost": plan.vhost}
        )
    return report


def _declare(
    change: Change, channel: amqp.Channel, management: ManagementClient, vhost: str
) -> None:
    target = change.target
    if isinstance(target, Exchange):
        channel.declare_exchange(
            target.name,
            type=target.type,
            durable=target.durable,
            auto_delete=target.auto_delete,
            internal=target.internal,
            arguments=target.declare_arguments(),
        )
    elif isinstance(target, Queue):
        channel.declare_queue(
            target.name,
            durable=target.durable,
            exclusive=target.exclusive,
            auto_delete=target.auto_delete,
            arguments=target.declare_arguments(),
        )
    elif isinstance(target, Binding):
        if target.destination_type == "queue":
            channel.bind_queue(
                target.destination, target.source, target.routing_key, target.arguments
            )
        else:
            channel.bind_exchange(
                target.destination, target.source, target.routing_key, target.arguments
            )
    elif isinstance(target, Policy):
        management.put_policy(
            vhost,
            target.name,
            pattern=target.pattern,
            definition=dict(target.definition),
            priority=target.priority,
            apply_to=target.apply_to,
        )


def _prune(
    plan: Plan, channel: amqp.Channel, *, force: bool, report: ApplyReport
) -> None:
    for change in prune_candidates(plan):
        live = change.live or {}
        if change.kind == "binding":
            args = dict(live.get("arguments") or {})
            source, dest, key = (
                str(live["source"]),
                str(live["destination"]),
                str(live.get("routing_key", "")),
            )
            if live.get("destination_type") == "exchange":
                channel.unbind_exchange(dest, source, key, args)
            else:
                channel.unbind_queue(dest, source, key, args)
            report.pruned.append(f"deleted binding {change.name}")
        elif change.kind == "queue":
            if not _delete_queue(change, channel, force=force):
                report.kept.append(change.name)
                continue
            report.pruned.append(f"deleted queue {change.name}")
        elif change.kind == "exchange":
            channel.delete_exchange(change.name)
            report.pruned.append(f"deleted exchange {change.name}")


def _delete_queue(change: Change, channel: amqp.Channel, *, force: bool) -> bool:
    live = change.live or {}
    state = channel.queue_state(change.name)
    if state is None:
        return True  # already gone
    busy = (
        state.message_count > 0
        or state.consumer_count > 0
        or bool(live.get("messages"))
    )
    if busy and not force:
        logger.warning(
            "kept unmanaged queue %r: %d ready messages, %d consumers",
            change.name,
            state.message_count,
            state.consumer_count,
            extra={"action": "topology_prune_kept", "queue": change.name},
        )
        return False
    # Classic queues can refuse to delete if a message arrived meanwhile;
    # quorum queues do not support if-empty (540), so the check above is all we have.
    if_empty = not force and live.get("type", "classic") == "classic"
    try:
        channel.delete_queue(change.name, if_empty=if_empty)
    except errors.BrokerRefused as exc:
        if exc.reply_code == 406:  # not empty any more
            return False
        raise
    return True
