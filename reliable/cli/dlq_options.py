"""Options, confirmation, signal handling and summaries shared by the ``reliable dlq`` commands."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import click

from reliable.cli import exit_codes, output
from reliable.cli.context import CliContext
from reliable.dlq import DeadLetters, RunReport, Target
from reliable.dlq_filters import Filter, parse_header_filter
from reliable.dlq_headers import REASONS
from reliable.durations import parse_duration
from reliable.metrics import Metrics

F = TypeVar("F", bound=Callable[..., Any])


def filter_options(fn: F) -> F:
    """The selection options shared by show, replay, export, import, purge and move."""
    options = [
        click.option(
            "--source-queue",
            multiple=True,
            help="Only messages that died in this queue (repeatable).",
        ),
        click.option(
            "--reason",
            multiple=True,
            type=click.Choice(REASONS),
            help="Only this dead-letter reason (repeatable).",
        ),
        click.option(
            "--older-than",
            metavar="AGE",
            help="Only messages that died longer ago than AGE (30s, 5m, 2h, 7d).",
        ),
        click.option(
            "--newer-than", metavar="AGE", help="Only messages that died within AGE."
        ),
        click.option(
            "--header",
            "header_filters",
            multiple=True,
            metavar="K=V",
            help="Only messages whose header K equals V (repeatable, all must hold).",
        ),
        click.option(
            "--task",
            multiple=True,
            help="Only Celery tasks of this name (headers['task']).",
        ),
        click.option(
            "--exception",
            multiple=True,
            metavar="TYPE",
            help="Only tasks whose failure record has this exception type (needs a database).",
        ),
        click.option(
            "--message-id",
            multiple=True,
            metavar="ID",
            help="Only this message_id / correlation_id / task id.",
        ),
        click.option(
            "--limit",
            type=click.IntRange(min=1),
            default=None,
            help="Act on at most N matching messages.",
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def build_filter(kw: dict[str, Any], *, default_limit: int | None = None) -> Filter:
    try:
        return Filter(
            source_queues=tuple(kw.pop("source_queue", ())),
            reasons=tuple(kw.pop("reason", ())),
            older_than_seconds=_duration(kw.pop("older_than", None)),
            newer_than_seconds=_duration(kw.pop("newer_than", None)),
            headers=tuple(parse_header_filter(h) for h in kw.pop("header_filters", ())),
            tasks=tuple(kw.pop("task", ())),
            exceptions=tuple(kw.pop("exception", ())),
            message_ids=tuple(kw.pop("message_id", ())),
            limit=kw.pop("limit", None) or default_limit,
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


def _duration(value: str | None) -> float | None:
    return parse_duration(value) if value else None


def target_options(fn: F) -> F:
    fn = click.option(
        "--routing-key", default="", help="Routing key with --to-exchange."
    )(fn)
    fn = click.option(
        "--to-exchange",
        default=None,
        help="Publish to this exchange instead of the origin.",
    )(fn)
    return click.option(
        "--to",
        "to_queue",
        default=None,
        help="Publish to this queue instead of the origin.",
    )(fn)


def build_target(
    to_queue: str | None, to_exchange: str | None, routing_key: str
) -> Target:
    if to_queue is not None and to_exchange is not None:
        msg = "give --to or --to-exchange, not both"
        raise click.UsageError(msg)
    return Target(queue=to_queue, exchange=to_exchange, routing_key=routing_key)


def letters_for(ctx: CliContext) -> DeadLetters:
    settings = ctx.settings
    metrics = None
    if settings.metrics_port:
        # A long replay Job can be scraped while it runs (RELIABLE_METRICS_PORT).
        metrics = Metrics()
        metrics.serve(settings.metrics_port)
    return DeadLetters(
        settings.amqp_url,
        database_url=settings.database_url or None,
        db_schema=settings.db_schema,
        management_url=settings.management_url or None,
        confirm_timeout_seconds=settings.confirm_timeout_seconds,
        metrics=metrics,
    )


class Stop:
    """Set by SIGINT/SIGTERM: the run finishes its in-flight batch, then stops."""

    def __init__(self) -> None:
        self.requested = False

    def __call__(self) -> bool:
        return self.requested


@contextlib.contextmanager
def graceful() -> Iterator[Stop]:
    stop = Stop()

    def handler(signum: int, _frame: Any) -> None:
        if stop.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: give up waiting
        stop.requested = True
        output.note("stopping after the in-flight messages are confirmed ...")

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def confirm(question: str, yes: bool) -> None:
    if yes:
        return
    if not output.interactive():
        msg = "refusing to change queues without a terminal; pass --yes"
        raise click.UsageError(msg)
    if not click.confirm(question, default=False, err=True):
        raise click.exceptions.Exit(exit_codes.EXIT_FAILURE)


def finish(report: RunReport, output_format: output.OutputFormat) -> None:
    """Print the summary (and the plan of a dry run) and exit with the right code."""
    if output_format == "json":
        output.echo_json(report.to_json())
    else:
        if report.dry_run and report.plan:
            output.render_rows(
                report.plan,
                columns=PLAN_COLUMNS,
                output="table",
                title="dry run: nothing was changed",
            )
        rows = [{"outcome": k, "count": v} for k, v in sorted(report.counts.items())]
        title = f"{report.command} {report.queue}" + (
            " (dry run)" if report.dry_run else ""
        )
        output.render_rows(
            rows,
            columns=[("outcome", "outcome"), ("count", "count")],
            output="table",
            title=title,
        )
        for problem in report.tally.problems:
            output.note(f"  {problem}")
        for warning in report.warnings:
            output.note(f"note: {warning}")
    if report.interrupted:
        raise click.exceptions.Exit(exit_codes.EXIT_INTERRUPTED)
    if not report.complete:
        raise click.exceptions.Exit(exit_codes.EXIT_INCOMPLETE)


PLAN_COLUMNS = [("id", "message"), ("from", "from"), ("to", "to"), ("action", "action")]
SHOW_COLUMNS = [
    ("message", "message"),
    ("task", "task"),
    ("source_queue", "source queue"),
    ("reason", "reason"),
    ("death_count", "deaths"),
    ("age", "age"),
    ("replay_count", "replays"),
    ("exception_type", "exception"),
    ("size", "bytes"),
]


def show_row(summary: dict[str, Any]) -> dict[str, Any]:
    """A `DeadLetter.summary` shaped for the table: one id column, a readable age."""
    return {
        **summary,
        "message": summary["message_id"] or summary["task_id"] or "",
        "age": age(summary["age_seconds"]),
    }


def age(seconds: float | None) -> str:
    if seconds is None:
        return ""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


def progress(total: int | None, label: str, output_format: output.OutputFormat) -> Any:
    return output.progress(label, total, enabled=output_format != "json")
