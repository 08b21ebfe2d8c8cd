"""``reliable outbox``: run the relay and inspect, retry or purge outbox rows."""

from __future__ import annotations

import signal
import sys
from types import FrameType

import click

from reliable import errors, outbox_store
from reliable.cli import output
from reliable.cli.context import CliContext
from reliable.cli.params import Duration
from reliable.log import configure_json_logging
from reliable.metrics import Metrics
from reliable.relay import OutboxRelay, RelayConfig
from reliable.retry import RetryPolicy


@click.group("outbox")
def outbox_group() -> None:
    """Relay outbox messages to RabbitMQ and manage stuck or dead rows."""


@outbox_group.command("relay")
@click.option("--once", is_flag=True, help="Publish what is due now, then exit.")
@click.option(
    "--batch-size",
    type=click.IntRange(1),
    default=None,
    help="Rows claimed per batch [default: 500].",
)
@click.option(
    "--window",
    type=click.IntRange(1),
    default=500,
    show_default=True,
    help="Publishes in flight awaiting confirms.",
)
@click.option(
    "--max-attempts",
    type=click.IntRange(1),
    default=10,
    show_default=True,
    help="Failed attempts (returned, nacked, refused) before a row is dead.",
)
@click.option(
    "--backoff",
    type=Duration(),
    default="1s",
    show_default=True,
    help="First retry delay; doubles each attempt.",
)
@click.option(
    "--max-backoff",
    type=Duration(),
    default="5m",
    show_default=True,
    help="Longest retry delay.",
)
@click.option(
    "--lease",
    type=Duration(),
    default="60s",
    show_default=True,
    help="How long a claim holds its rows; a crashed relay's rows come back after it.",
)
@click.option(
    "--confirm-timeout",
    type=Duration(),
    default=None,
    help="Wait for confirms before treating messages as unconfirmed [default: 30s].",
)
@click.option(
    "--poll-interval",
    type=Duration(),
    default=None,
    help="Longest sleep without a NOTIFY [default: 1s].",
)
@click.option(
    "--keep-published",
    type=Duration(),
    default="0",
    show_default=True,
    help="Keep published rows this long (0 deletes them when confirmed).",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    default=None,
    help="Serve Prometheus /metrics on this port.",
)
@click.option(
    "--log-format",
    type=click.Choice(["json", "text"]),
    default="json",
    show_default=True,
    help="Log line format on stderr.",
)
@click.pass_obj
def relay_cmd(
    ctx: CliContext,
    once: bool,
    batch_size: int | None,
    window: int,
    max_attempts: int,
    backoff: float,
    max_backoff: float,
    lease: float,
    confirm_timeout: float | None,
    poll_interval: float | None,
    keep_published: float,
    metrics_port: int | None,
    log_format: str,
) -> None:
    """
    Publish committed outbox rows with confirms until stopped.

    SIGTERM or Ctrl-C finish the batch in flight (its confirms are awaited
    and recorded) and exit 0. Several relays may run at once.
    """
    settings = ctx.settings
    level = "DEBUG" if ctx.debug else settings.log_level
    if log_format == "json":
        configure_json_logging(level)
    config = RelayConfig(
        batch_size=batch_size or settings.outbox_batch_size,
        window=window,
        lease_seconds=lease,
        confirm_timeout_seconds=confirm_timeout
        if confirm_timeout is not None
        else settings.confirm_timeout_seconds,
        poll_interval_seconds=poll_interval
        if poll_interval is not None
        else settings.outbox_poll_interval_seconds,
        keep_published_seconds=keep_published,
    )
    try:
        policy = RetryPolicy(
            max_attempts=max_attempts, base_seconds=backoff, max_seconds=max_backoff
        )
    except ValueError as exc:
        raise errors.ConfigError(str(exc), key="backoff") from None
    metrics = Metrics()
    port = metrics_port if metrics_port is not None else settings.metrics_port
    if port is not None:
        metrics.serve(port)
    relay = OutboxRelay(
        database_url=settings.database_url,
        amqp_url=settings.amqp_url,
        schema=settings.db_schema,
        config=config,
        retry_policy=policy,
        metrics=metrics,
    )
    if once:
        stats = relay.run_once()
    else:

        def on_signal(_signum: int, _frame: FrameType | None) -> None:
            relay.stop()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        stats = relay.run()
    output.note(
        f"published {stats.published}, failed {stats.failed} "
        f"(dead {stats.dead}), unconfirmed {stats.unconfirmed}"
    )


@outbox_group.command("status")
@output.output_option
@click.pass_obj
def status_cmd(ctx: CliContext, output_format: output.OutputFormat) -> None:
    """Backlog, oldest unsent age, dead rows, and the same per destination."""
    with ctx.database(autocommit=True) as conn:
        summary = outbox_store.summary(conn, schema=ctx.settings.db_schema)
        destinations = outbox_store.by_destination(conn, schema=ctx.settings.db_schema)
    if output_format == "json":
        output.echo_json({**summary, "destinations": destinations})
        return
    click.echo(
        f"backlog {summary['backlog']} (due {summary['due']}, in flight "
        f"{summary['in_flight']}, retrying {summary['retrying']}), dead {summary['dead']}, "
        f"oldest unsent {summary['oldest_age_seconds']:.1f}s, kept published "
        f"{summary['published_kept']}"
    )
    output.render_rows(
        destinations,
        columns=[
            ("exchange", "exchange"),
            ("routing_key", "routing key"),
            ("backlog", "backlog"),
            ("dead", "dead"),
            ("oldest_age_seconds", "oldest age (s)"),
            ("last_error", "last error"),
        ],
        output="table",
        empty="no unpublished rows",
    )


@outbox_group.command("list")
@click.option("--dead", is_flag=True, help="List dead rows instead of pending ones.")
@click.option("--limit", type=click.IntRange(1), default=50, show_default=True)
@output.output_option
@click.pass_obj
def list_cmd(
    ctx: CliContext, dead: bool, limit: int, output_format: output.OutputFormat
) -> None:
    """List pending (or, with --dead, dead) outbox rows, oldest first."""
    with ctx.database(autocommit=True) as conn:
        rows = outbox_store.list_rows(
            conn, schema=ctx.settings.db_schema, dead=dead, limit=limit
        )
    columns = [
        ("id", "id"),
        ("message_id", "message id"),
        ("exchange", "exchange"),
        ("routing_key", "routing key"),
        ("ordering_key", "ordering key"),
        ("attempts", "attempts"),
        ("dead_at" if dead else "available_at", "dead at" if dead else "due at"),
        ("last_error", "last error"),
    ]
    output.render_rows(
        rows,
        columns=columns,
        output=output_format,
        empty="no dead rows" if dead else "no pending rows",
    )


@outbox_group.command("retry")
@click.argument("ids", nargs=-1)
@click.option("--all-dead", is_flag=True, help="Retry every dead row.")
@output.output_option
@click.pass_obj
def retry_cmd(
    ctx: CliContext,
    ids: tuple[str, ...],
    all_dead: bool,
    output_format: output.OutputFormat,
) -> None:
    """Make rows (row ids or message ids) due now with a fresh attempt budget."""
    if bool(ids) == all_dead:
        msg = "give row ids or message ids, or --all-dead (not both)"
        raise click.UsageError(msg)
    with ctx.database() as conn:
        schema = ctx.settings.db_schema
        rows = (
            outbox_store.retry_all_dead(conn, schema=schema)
            if all_dead
            else outbox_store.retry(conn, ids, schema=schema)
        )
        conn.commit()
    if output_format == "json":
        output.echo_json({"retried": rows})
    else:
        click.echo(f"retried {len(rows)} rows")
    if ids:
        found = {str(r["id"]) for r in rows} | {r["message_id"] for r in rows}
        missing = [i for i in ids if i not in found]
        if missing:
            output.note(f"not found or already published: {', '.join(missing)}")
            sys.exit(1)


@outbox_group.command("purge")
@click.option(
    "--dead", "dead", is_flag=True, help="Purge dead rows (required: names the target)."
)
@click.option(
    "--older-than",
    type=Duration(),
    default="7d",
    show_default=True,
    help="Only rows dead for longer than this.",
)
@click.option("--batch-size", type=click.IntRange(1), default=1000, show_default=True)
@output.output_option
@click.pass_obj
def purge_cmd(
    ctx: CliContext,
    dead: bool,
    older_than: float,
    batch_size: int,
    output_format: output.OutputFormat,
) -> None:
    """Delete dead rows older than --older-than, in bounded batches."""
    if not dead:
        msg = "say what to purge: --dead"
        raise click.UsageError(msg)
    with ctx.database(autocommit=True) as conn:
        deleted = outbox_store.purge(
            conn,
            schema=ctx.settings.db_schema,
            what="dead",
            older_than_seconds=older_than,
            batch_size=batch_size,
        )
    if output_format == "json":
        output.echo_json({"deleted": deleted})
    else:
        click.echo(f"deleted {deleted} dead rows")
