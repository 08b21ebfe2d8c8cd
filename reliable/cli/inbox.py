"""``reliable inbox``: retention and a look at the inbox of effectively-once tasks."""

from __future__ import annotations

import click

from reliable.cli import output
from reliable.cli.context import CliContext
from reliable.cli.params import Duration
from reliable.inbox import Inbox

STATUS_COLUMNS = [
    ("consumer", "consumer"),
    ("rows", "rows"),
    ("oldest", "oldest"),
    ("newest", "newest"),
]
FAILURE_COLUMNS = [
    ("failed_at", "failed at"),
    ("task_name", "task"),
    ("task_id", "task id"),
    ("queue", "queue"),
    ("exception_type", "exception"),
    ("attempts", "attempts"),
    ("exception_message", "message"),
]


@click.group("inbox")
def inbox_group() -> None:
    """Retention and status of the inbox of effectively-once tasks."""


def _inbox(ctx: CliContext) -> Inbox:
    return Inbox(schema=ctx.settings.db_schema)


@inbox_group.command("purge")
@click.option(
    "--older-than",
    "older_than",
    type=Duration(),
    required=True,
    help="Delete rows processed longer ago than this (e.g. 7d). Keep it above the longest "
    "redelivery horizon: retries, delays and dead-letter replays.",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=1000,
    show_default=True,
    help="Rows per DELETE; each batch commits on its own.",
)
@click.option(
    "--dry-run", is_flag=True, help="Count the rows that would go, delete nothing."
)
@output.output_option
@click.pass_obj
def purge_cmd(
    ctx: CliContext,
    older_than: float,
    batch_size: int,
    dry_run: bool,
    output_format: output.OutputFormat,
) -> None:
    """Delete old inbox rows in bounded batches."""
    inbox = _inbox(ctx)
    with ctx.database(autocommit=True) as conn:
        if dry_run:
            count = inbox.count_older(conn, older_than_seconds=older_than)
        else:
            count = inbox.purge(
                conn, older_than_seconds=older_than, batch_size=batch_size
            )
    if output_format == "json":
        output.echo_json(
            {
                "deleted": 0 if dry_run else count,
                "would_delete": count if dry_run else 0,
            }
        )
    else:
        verb = "would delete" if dry_run else "deleted"
        click.echo(f"{verb} {count} inbox rows older than {older_than:g}s")


@inbox_group.command("status")
@output.output_option
@click.pass_obj
def status_cmd(ctx: CliContext, output_format: output.OutputFormat) -> None:
    """Rows per consumer with the oldest and newest processing time."""
    with ctx.database(autocommit=True) as conn:
        rows = _inbox(ctx).status(conn)
    output.render_rows(
        rows,
        columns=STATUS_COLUMNS,
        output=output_format,
        title="inbox",
        empty="the inbox is empty",
    )


@inbox_group.command("failures")
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=20,
    show_default=True,
    help="Show at most this many.",
)
@output.output_option
@click.pass_obj
def failures_cmd(
    ctx: CliContext, limit: int, output_format: output.OutputFormat
) -> None:
    """The newest final failures of effectively-once tasks (reliable_task_failures)."""
    with ctx.database(autocommit=True) as conn:
        rows = _inbox(ctx).recent_failures(conn, limit=limit)
    output.render_rows(
        rows,
        columns=FAILURE_COLUMNS,
        output=output_format,
        title="task failures",
        empty="no task failures recorded",
    )
