"""``reliable dlq``: list, show, replay, export, import, purge and move dead letters."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from reliable import dlq_archive, errors
from reliable.cli import output
from reliable.cli.context import CliContext
from reliable.cli.dlq_options import (
    SHOW_COLUMNS,
    age,
    build_filter,
    build_target,
    confirm,
    filter_options,
    finish,
    graceful,
    letters_for,
    progress,
    show_row,
    target_options,
)
from reliable.dlq import summarize, vhost_of
from reliable.dlq_discovery import discover


@click.group("dlq")
@click.pass_obj
def dlq_group(ctx: CliContext) -> None:
    """Inspect dead-letter queues and replay dead letters to where they came from."""
    if not ctx.debug:
        # pika logs every channel close (a passive check of a missing queue is
        # one) as a warning; our one-line errors already say what happened.
        logging.getLogger("pika").setLevel(logging.CRITICAL)


@dlq_group.command("list")
@click.argument("queues", nargs=-1)
@click.option(
    "--sample",
    type=click.IntRange(min=0),
    default=1000,
    show_default=True,
    help="Look at up to N messages per queue for ages and counts (0: depth only).",
)
@output.output_option
@click.pass_obj
def list_cmd(
    ctx: CliContext,
    queues: tuple[str, ...],
    sample: int,
    output_format: output.OutputFormat,
) -> None:
    """List dead-letter queues (found from DLX arguments and policies, or named) with depth, age and counts."""
    letters = letters_for(ctx)
    letters.check_broker()
    found: dict[str, dict[str, Any]] = {}
    mgmt = ctx.management()
    vhost = vhost_of(ctx.settings.amqp_url)
    listing = mgmt.queues(vhost)
    # Named queues get the same type and sources as discovered ones; a named
    # queue that no DLX points at is still listed, with its type.
    for entry in discover(
        listing, mgmt.bindings(vhost), broker_version=mgmt.broker_version()
    ):
        if not queues or entry.name in queues:
            found[entry.name] = {
                "queue": entry.name,
                "type": entry.type,
                "sources": entry.sources,
                "delivery_limit": entry.delivery_limit,
            }
    types = {str(q.get("name")): q.get("type") for q in listing}
    for name in queues:
        found.setdefault(
            name,
            {
                "queue": name,
                "type": types.get(name),
                "sources": [],
                "delivery_limit": None,
            },
        )
    rows = []
    for name, row in found.items():
        row["depth"] = letters.check_queue(name).message_count
        if sample:
            sampled, _ = letters.peek(name, scan_limit=sample)
            row.update(summarize(sampled))
        rows.append(row)
    if output_format == "json":
        output.echo_json(rows)
        return
    for row in rows:
        for key in ("by_source_queue", "by_reason", "by_exception_type"):
            row[key] = ", ".join(
                f"{next(iter(g.values())) or '(unknown)'}: {g['count']}"
                for g in row.get(key) or []
            )
        row["sources"] = ", ".join(row["sources"])
        row["oldest"] = age(row.get("oldest_age_seconds"))
    output.render_rows(
        rows,
        columns=[
            ("queue", "queue"),
            ("type", "type"),
            ("depth", "depth"),
            ("oldest", "oldest"),
            ("sources", "dead-lettered from"),
            ("by_source_queue", "by source queue"),
            ("by_reason", "by reason"),
            ("by_exception_type", "by exception"),
        ],
        output="table",
        title="dead-letter queues",
        empty="no dead-letter queues found",
    )


@dlq_group.command("show")
@click.argument("queue")
@filter_options
@click.option(
    "--full", is_flag=True, help="Print headers, properties and body of each message."
)
@output.output_option
@click.pass_obj
def show_cmd(
    ctx: CliContext,
    /,
    queue: str,
    full: bool,
    output_format: output.OutputFormat,
    **kw: Any,
) -> None:
    """Show dead letters with their origin; the queue keeps the same messages in the same order."""
    flt = build_filter(kw, default_limit=20)
    letters, _ = letters_for(ctx).peek(queue, flt)
    now = datetime.now(UTC)
    if output_format == "json":
        output.echo_json([x.detail(now) for x in letters])
        return
    if not full:
        output.render_rows(
            [show_row(x.summary(now)) for x in letters],
            columns=SHOW_COLUMNS,
            output="table",
            title=f"dead letters in {queue}",
            empty="no matching dead letters",
        )
        return
    for letter in letters:
        # A terminal cannot usefully show megabytes; `--output json` and
        # `dlq export` give the whole body.
        output.show_record(letter.detail(now, max_body=64 * 1024))


@dlq_group.command("replay")
@click.argument("queue")
@filter_options
@target_options
@click.option(
    "--rate",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="At most N messages per second.",
)
@click.option(
    "--max-replays",
    type=click.IntRange(min=0),
    default=5,
    show_default=True,
    help="Park a message already replayed this many times.",
)
@click.option(
    "--parking-lot",
    default=None,
    help="Parking-lot queue [default: QUEUE.parking-lot].",
)
@click.option(
    "--parking-lot-type",
    type=click.Choice(["classic", "quorum"]),
    default="classic",
    show_default=True,
    help="Type used when the parking lot is declared.",
)
@click.option(
    "--dry-run", is_flag=True, help="Print what would move where; change nothing."
)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@output.output_option
@click.pass_obj
def replay_cmd(
    ctx: CliContext,
    /,
    queue: str,
    to_queue: str | None,
    to_exchange: str | None,
    routing_key: str,
    rate: float | None,
    max_replays: int,
    parking_lot: str | None,
    parking_lot_type: str,
    dry_run: bool,
    yes: bool,
    output_format: output.OutputFormat,
    **kw: Any,
) -> None:
    """Republish dead letters to their queue of origin (or --to), acking each after its confirm."""
    flt = build_filter(kw)
    target = build_target(to_queue, to_exchange, routing_key)
    letters = letters_for(ctx)
    depth = letters.check_queue(queue).message_count
    if not dry_run:
        confirm(
            f"replay up to {depth} message(s) from {queue!r} to {target.describe()}?",
            yes,
        )
    with (
        graceful() as stop,
        progress(depth, f"replaying {queue}", output_format) as advance,
    ):
        report = letters.replay(
            queue,
            flt,
            target=target,
            rate=rate,
            max_replays=max_replays,
            parking_lot=parking_lot,
            parking_lot_type="quorum" if parking_lot_type == "quorum" else "classic",
            dry_run=dry_run,
            stop=stop,
            progress=advance,
        )
    finish(report, output_format)


@dlq_group.command("move")
@click.argument("source")
@click.argument("destination")
@filter_options
@click.option(
    "--rate",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="At most N messages per second.",
)
@click.option("--dry-run", is_flag=True, help="Print what would move; change nothing.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@output.output_option
@click.pass_obj
def move_cmd(
    ctx: CliContext,
    /,
    source: str,
    destination: str,
    rate: float | None,
    dry_run: bool,
    yes: bool,
    output_format: output.OutputFormat,
    **kw: Any,
) -> None:
    """Move messages from SOURCE to queue DESTINATION unchanged, acking each after its confirm."""
    flt = build_filter(kw)
    letters = letters_for(ctx)
    depth = letters.check_queue(source).message_count
    if not dry_run:
        confirm(
            f"move up to {depth} message(s) from {source!r} to {destination!r}?", yes
        )
    with (
        graceful() as stop,
        progress(depth, f"moving {source}", output_format) as advance,
    ):
        report = letters.move(
            source,
            destination,
            flt,
            rate=rate,
            dry_run=dry_run,
            stop=stop,
            progress=advance,
        )
    finish(report, output_format)


@dlq_group.command("purge")
@click.argument("queue")
@filter_options
@click.option(
    "--dry-run", is_flag=True, help="Count what would be removed; change nothing."
)
@click.option(
    "--yes",
    is_flag=True,
    help="Required (or a terminal to confirm): this deletes messages.",
)
@output.output_option
@click.pass_obj
def purge_cmd(
    ctx: CliContext,
    /,
    queue: str,
    dry_run: bool,
    yes: bool,
    output_format: output.OutputFormat,
    **kw: Any,
) -> None:
    """Delete all dead letters of QUEUE, or with filters only the matching ones."""
    flt = build_filter(kw)
    letters = letters_for(ctx)
    depth = letters.check_queue(queue).message_count
    if not dry_run:
        what = "all" if flt.selects_all and flt.limit is None else "the matching"
        confirm(f"delete {what} of {depth} message(s) in {queue!r}?", yes)
    with graceful() as stop:
        report = letters.purge(queue, flt, dry_run=dry_run, stop=stop)
    finish(report, output_format)


@dlq_group.command("export")
@click.argument("queue")
@click.option(
    "-o",
    "--output-file",
    "path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="JSON Lines file to write.",
)
@filter_options
@click.option(
    "--remove",
    is_flag=True,
    help="Remove exported messages (after the file is written and fsynced).",
)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation with --remove.")
@output.output_option
@click.pass_obj
def export_cmd(
    ctx: CliContext,
    /,
    queue: str,
    path: Path,
    remove: bool,
    yes: bool,
    output_format: output.OutputFormat,
    **kw: Any,
) -> None:
    """Write dead letters to a JSON Lines file, losslessly (bodies base64, typed headers)."""
    flt = build_filter(kw)
    letters = letters_for(ctx)
    depth = letters.check_queue(queue).message_count
    if remove:
        confirm(f"export and remove up to {depth} message(s) from {queue!r}?", yes)
    with (
        graceful() as stop,
        progress(depth, f"exporting {queue}", output_format) as advance,
    ):
        report = dlq_archive.export(
            letters, queue, path, flt, remove=remove, stop=stop, progress=advance
        )
    finish(report, output_format)


@dlq_group.command("import")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@filter_options
@target_options
@click.option(
    "--rate",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="At most N messages per second.",
)
@click.option(
    "--dry-run", is_flag=True, help="Print what would be published; publish nothing."
)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@output.output_option
@click.pass_obj
def import_cmd(
    ctx: CliContext,
    /,
    path: Path,
    to_queue: str | None,
    to_exchange: str | None,
    routing_key: str,
    rate: float | None,
    dry_run: bool,
    yes: bool,
    output_format: output.OutputFormat,
    **kw: Any,
) -> None:
    """Replay the messages of an export file to their origin (or --to), with confirms."""
    flt = build_filter(kw)
    target = build_target(to_queue, to_exchange, routing_key)
    if not path.exists():
        msg = f"file {str(path)!r} does not exist; check the path"
        raise errors.DecodeError(msg, reason="missing")
    if not dry_run:
        confirm(f"publish the messages of {path.name!r} to {target.describe()}?", yes)
    letters = letters_for(ctx)
    with (
        graceful() as stop,
        progress(None, f"importing {path.name}", output_format) as advance,
    ):
        report = dlq_archive.import_file(
            letters,
            path,
            flt,
            target=target,
            rate=rate,
            dry_run=dry_run,
            stop=stop,
            progress=advance,
        )
    finish(report, output_format)


@dlq_group.command("history")
@click.option("--queue", default=None, help="Only runs on this queue.")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
@output.output_option
@click.pass_obj
def history_cmd(
    ctx: CliContext, queue: str | None, limit: int, output_format: output.OutputFormat
) -> None:
    """List audited dlq runs (needs a database), newest first."""
    rows = letters_for(ctx).history(queue=queue, limit=limit)
    output.render_rows(
        rows,
        columns=[
            ("id", "id"),
            ("started_at", "started"),
            ("os_user", "user"),
            ("command", "command"),
            ("queue", "queue"),
            ("target", "target"),
            ("filters", "filters"),
            ("counts", "counts"),
            ("dry_run", "dry run"),
            ("interrupted", "interrupted"),
        ],
        output=output_format,
        title="dlq runs",
        empty="no dlq runs recorded",
    )
