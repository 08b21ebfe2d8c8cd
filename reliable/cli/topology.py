"""``reliable topology``: validate, plan, apply, export and describe topology files."""

from __future__ import annotations

from pathlib import Path

import click

from reliable import declare, declare_apply, errors, topology_file
from reliable.cli import exit_codes, output
from reliable.cli.context import CliContext
from reliable.redact import redact_text
from reliable.topology import Topology
from reliable.topology_export import export_topology

FILES = click.argument(
    "files", nargs=-1, required=True, type=click.Path(path_type=Path)
)
_COLUMNS = [
    ("action", "action"),
    ("kind", "kind"),
    ("name", "name"),
    ("details", "details"),
]


@click.group("topology")
def topology_group() -> None:
    """Declare exchanges, queues, bindings and policies from YAML files."""


@topology_group.command("validate")
@FILES
def validate_cmd(files: tuple[Path, ...]) -> None:
    """Check FILES offline and report every problem with its file, line and key."""
    try:
        topologies = topology_file.load_topologies(files)
    except errors.TopologyFileError as exc:
        for location, message in exc.problems or [(str(exc.path), exc.message)]:
            output.note(f"{location}: {message}")
        output.note(
            f"{len(exc.problems) or 1} problem(s); nothing was checked against a broker"
        )
        raise click.exceptions.Exit(exit_codes.EXIT_INVALID) from None
    for t in topologies:
        click.echo(
            f"ok: vhost {t.vhost!r}: {len(t.exchanges)} exchanges, {len(t.queues)} queues, "
            f"{len(t.bindings)} bindings, {len(t.policies)} policies"
        )


@topology_group.command("schema")
def schema_cmd() -> None:
    """Print the JSON Schema of the file format (for editors)."""
    click.echo(topology_file.json_schema_text())


def _plans(ctx: CliContext, topologies: list[Topology]) -> list[declare.Plan]:
    management = ctx.management()
    version = management.broker_version()
    plans = []
    for t in topologies:
        live = declare_apply.read_live_state(management, t.vhost)
        plans.append(declare.plan(t, live, broker_version=version))
    return plans


def _details(change: declare.Change) -> str:
    lines = []
    if change.reason:
        lines.append(change.reason)
    for key in sorted(set(change.expected) | set(change.actual)):
        if change.action in ("conflict", "update"):
            lines.append(
                f"{key}: {change.actual.get(key)!r} -> {change.expected.get(key)!r}"
            )
    for key, eff in change.effective.items():
        lines.append(
            f"effective {key}={eff['effective']!r} from {eff['source']} (file: {eff['file']!r})"
        )
    if change.action == "unmanaged" and change.kind == "queue":
        lines.append(f"messages: {change.actual.get('messages')}")
    if change.remedy:
        lines.append(f"way out: {change.remedy}")
    lines += [f"warning: {w}" for w in change.warnings]
    return "\n".join(lines)


def _render(
    plans: list[declare.Plan],
    output_format: output.OutputFormat,
    *,
    all_rows: bool = False,
) -> None:
    if output_format == "json":
        output.echo_json({"plans": [p.to_dict() for p in plans]})
        return
    for p in plans:
        rows = [
            {"action": c.action, "kind": c.kind, "name": c.name, "details": _details(c)}
            for c in p.changes
            if all_rows or c.action != "unchanged"
        ]
        version = ".".join(map(str, p.broker_version))
        output.render_rows(
            rows,
            columns=_COLUMNS,
            output="table",
            title=f"vhost {p.vhost!r} on RabbitMQ {version}",
            empty=f"vhost {p.vhost!r}: no changes",
        )
        counts = ", ".join(f"{n} {a}" for a, n in p.summary().items() if n)
        output.note(f"vhost {p.vhost!r}: {counts or 'nothing declared'}")


@topology_group.command("plan")
@FILES
@output.output_option
@click.option(
    "--detailed-exitcode",
    is_flag=True,
    help="Exit 0 for no changes, 1 for an error or conflict, 2 for changes pending.",
)
@click.option("--all", "all_rows", is_flag=True, help="Also list unchanged objects.")
@click.pass_obj
def plan_cmd(
    ctx: CliContext,
    files: tuple[Path, ...],
    output_format: output.OutputFormat,
    detailed_exitcode: bool,
    all_rows: bool,
) -> None:
    """Show what apply would change on the broker, without changing anything."""
    try:
        plans = _plans(ctx, topology_file.load_topologies(files))
    except errors.ReliableError as exc:
        if not detailed_exitcode:
            raise
        click.echo(f"error: {redact_text(str(exc))}", err=True)
        raise click.exceptions.Exit(exit_codes.EXIT_FAILURE) from None
    _render(plans, output_format, all_rows=all_rows)
    blocking = any(p.blocking for p in plans)
    pending = any(p.pending or _creates_vhost(p) for p in plans)
    if blocking:
        conflict = any(p.by_action("conflict") for p in plans)
        code = (
            exit_codes.EXIT_CONFLICT
            if conflict and not detailed_exitcode
            else exit_codes.EXIT_FAILURE
        )
        raise click.exceptions.Exit(code)
    if detailed_exitcode and pending:
        raise click.exceptions.Exit(2)


def _creates_vhost(p: declare.Plan) -> bool:
    return any(c.kind == "vhost" for c in p.changes)


@topology_group.command("apply")
@FILES
@click.option(
    "--yes", is_flag=True, help="Apply without asking (needed when not on a terminal)."
)
@click.option(
    "--prune",
    is_flag=True,
    help="Also delete unmanaged bindings, queues and exchanges.",
)
@click.option(
    "--force",
    is_flag=True,
    help="With --prune, delete queues even if they hold messages.",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Show the plan and what --prune would delete; change nothing.",
)
@click.pass_obj
def apply_cmd(
    ctx: CliContext,
    files: tuple[Path, ...],
    yes: bool,
    prune: bool,
    force: bool,
    dry_run: bool,
) -> None:
    """Show the plan, ask, then declare exchanges, queues, bindings and policies."""
    plans = _plans(ctx, topology_file.load_topologies(files))
    _render(plans, "table")
    blocked = [p for p in plans if p.blocking]
    if blocked:
        # Raises TopologyConflict/TopologyError before touching the broker.
        declare_apply.apply(
            blocked[0], amqp_url=ctx.settings.amqp_url, management=ctx.management()
        )
    doomed = {
        p.vhost: declare_apply.prune_candidates(p) if prune else [] for p in plans
    }
    for vhost, changes in doomed.items():
        for c in changes:
            output.note(f"prune would delete {c.kind} {c.name} in vhost {vhost!r}")
    work = sum(len(p.pending) + _creates_vhost(p) + len(doomed[p.vhost]) for p in plans)
    if not work:
        output.note("nothing to apply")
        return
    if dry_run:
        output.note(f"dry run: {work} change(s) not applied")
        return
    if not yes:
        if not output.interactive():
            output.note(
                "refusing to apply without a terminal to confirm on; pass --yes"
            )
            raise click.exceptions.Exit(exit_codes.EXIT_USAGE)
        if not click.confirm(f"apply {work} change(s)?", err=True):
            output.note("cancelled; nothing applied")
            raise click.exceptions.Exit(exit_codes.EXIT_FAILURE)
    for p in plans:
        with output.progress(
            f"applying {p.vhost}", len(p.pending), enabled=True
        ) as advance:
            report = declare_apply.apply(
                p,
                amqp_url=ctx.settings.amqp_url,
                management=ctx.management(),
                prune=prune,
                force=force,
                progress=advance,
            )
        for line in report.applied + report.pruned:
            click.echo(line)
        for name in report.kept:
            output.note(
                f"kept unmanaged queue {name!r}: it holds messages or has consumers (--force deletes it)"
            )


@topology_group.command("export")
@click.option("--vhost", default="/", show_default=True, help="The vhost to export.")
@click.option(
    "-o",
    "--output",
    "path",
    type=click.Path(path_type=Path),
    default=None,
    help="Write to FILE instead of stdout.",
)
@click.pass_obj
def export_cmd(ctx: CliContext, vhost: str, path: Path | None) -> None:
    """Write the broker's exchanges, queues, bindings and policies as a topology file."""
    management = ctx.management()
    live = declare_apply.read_live_state(management, vhost)
    if not live.exists:
        msg = f"vhost {vhost!r} does not exist; check the name with the management UI"
        raise errors.TopologyError(msg)
    topology, skipped = export_topology(live)
    for note in skipped:
        output.note(f"skipped {note}")
    text = topology_file.dump_topology(topology)
    if path is None:
        click.echo(text, nl=False)
    else:
        path.write_text(text, encoding="utf-8")
        output.note(f"wrote {path}")
