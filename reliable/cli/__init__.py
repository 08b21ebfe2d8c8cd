"""
The ``reliable`` command: one click group per noun, one exit code per failure family.

Every `ReliableError` becomes one line on stderr and an exit code from
`reliable.cli.exit_codes`; a traceback appears only with ``--debug``.
"""

from __future__ import annotations

import logging
import sys
import traceback
from typing import Any

import click

from reliable import errors
from reliable.cli import exit_codes
from reliable.cli.context import CliContext
from reliable.config import Settings
from reliable.redact import redact_text

HELP_EPILOG = """\b
Settings come from options or RELIABLE_AMQP_URL, RELIABLE_MANAGEMENT_URL,
RELIABLE_DATABASE_URL and RELIABLE_DB_SCHEMA. Exit codes: 0 ok, 1 failure,
2 usage, 3 broker, 4 database, 5 invalid input file, 6 topology conflict,
7 configuration, 8 incomplete (some messages not moved), 130 interrupted.
"""


def exit_code_for(exc: errors.ReliableError) -> int:
    if isinstance(exc, errors.TopologyFileError):
        return exit_codes.EXIT_INVALID
    if isinstance(exc, errors.TopologyConflict):
        return exit_codes.EXIT_CONFLICT
    if isinstance(exc, errors.ConfigError):
        return exit_codes.EXIT_CONFIG
    if isinstance(exc, errors.BrokerError):
        return exit_codes.EXIT_BROKER
    if isinstance(exc, errors.DatabaseError):
        return exit_codes.EXIT_DATABASE
    return exit_codes.EXIT_FAILURE


class ReliableGroup(click.Group):
    """Turns our errors into one line and an exit code instead of a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except errors.ReliableError as exc:
            debug = bool(ctx.meta.get("reliable.debug"))
            if debug:
                traceback.print_exc()
            click.echo(f"error: {redact_text(str(exc))}", err=True)
            ctx.exit(exit_code_for(exc))
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(exit_codes.EXIT_INTERRUPTED)
        except (
            click.exceptions.ClickException,
            click.exceptions.Exit,
            click.exceptions.Abort,
        ):
            raise
        except Exception as exc:  # a bug of ours: still one line, never a traceback
            if ctx.meta.get("reliable.debug"):
                traceback.print_exc()
            click.echo(
                f"error: unexpected {type(exc).__name__}: {redact_text(str(exc))}; "
                "rerun with --debug for the traceback and report it",
                err=True,
            )
            ctx.exit(exit_codes.EXIT_FAILURE)


@click.group(cls=ReliableGroup, epilog=HELP_EPILOG)
@click.option(
    "--amqp-url",
    envvar="RELIABLE_AMQP_URL",
    show_envvar=True,
    default=None,
    help="RabbitMQ AMQP URL; the default vhost is written %2F.",
)
@click.option(
    "--management-url",
    envvar="RELIABLE_MANAGEMENT_URL",
    show_envvar=True,
    default=None,
    help="RabbitMQ management API URL, e.g. http://user:pass@host:15672.",
)
@click.option(
    "--database-url",
    envvar="RELIABLE_DATABASE_URL",
    show_envvar=True,
    default=None,
    help="PostgreSQL URL; empty uses libpq's PG* variables.",
)
@click.option(
    "--db-schema",
    envvar="RELIABLE_DB_SCHEMA",
    show_envvar=True,
    default=None,
    help="PostgreSQL schema holding the reliable tables [default: reliable].",
)
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logs.")
@click.version_option(package_name="reliable")
@click.pass_context
def cli(
    ctx: click.Context,
    amqp_url: str | None,
    management_url: str | None,
    database_url: str | None,
    db_schema: str | None,
    debug: bool,
) -> None:
    """Reliable messaging for Celery on RabbitMQ: topology, outbox, inbox, dead letters."""
    ctx.meta["reliable.debug"] = debug
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING)
    base = Settings.from_env()
    overrides = {
        k: v
        for k, v in {
            "amqp_url": amqp_url,
            "management_url": management_url,
            "database_url": database_url,
            "db_schema": db_schema,
        }.items()
        if v is not None
    }
    settings = Settings(**{**_as_dict(base), **overrides})
    obj = CliContext(settings=settings, debug=debug)
    ctx.obj = obj
    ctx.call_on_close(obj.close)


def _as_dict(settings: Settings) -> dict[str, Any]:
    return {name: getattr(settings, name) for name in Settings.__dataclass_fields__}


def _register() -> None:
    # Imported here, not at module top, so `reliable.cli` stays importable
    # while a sub-command module is being edited; each adds its own group.
    from reliable.cli.db import db_group
    from reliable.cli.dlq import dlq_group
    from reliable.cli.inbox import inbox_group
    from reliable.cli.outbox import outbox_group
    from reliable.cli.topology import topology_group

    cli.add_command(db_group)
    cli.add_command(topology_group)
    cli.add_command(outbox_group)
    cli.add_command(inbox_group)
    cli.add_command(dlq_group)


_register()


def main() -> None:
    """Entry point of the ``reliable`` console script and ``python -m reliable``."""
    try:
        cli.main(prog_name="reliable", standalone_mode=True)
    except errors.ReliableError as exc:  # raised before the group could catch it
        click.echo(f"error: {redact_text(str(exc))}", err=True)
        sys.exit(exit_code_for(exc))
