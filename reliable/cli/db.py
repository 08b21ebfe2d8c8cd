"""``reliable db``: install and check the PostgreSQL tables."""

from __future__ import annotations

import click

from reliable import schema
from reliable.cli import output
from reliable.cli.context import CliContext


@click.group("db")
def db_group() -> None:
    """Install and check the reliable tables in PostgreSQL."""


@db_group.command("migrate")
@click.option(
    "--dry-run", is_flag=True, help="List pending migrations without applying them."
)
@click.pass_obj
def migrate_cmd(ctx: CliContext, dry_run: bool) -> None:
    """Apply pending migrations in one transaction (safe to run from several deploys at once)."""
    with ctx.database() as conn:
        manager = schema.SchemaManager(conn, schema=ctx.settings.db_schema)
        if dry_run:
            pending = manager.pending()
            conn.rollback()
        else:
            pending = manager.migrate()
    verb = "would apply" if dry_run else "applied"
    if not pending:
        output.note(f"schema {ctx.settings.db_schema!r} is up to date")
    for version, name in pending:
        click.echo(f"{verb} {version:04d}_{name}")


@db_group.command("check")
@output.output_option
@click.pass_obj
def check_cmd(ctx: CliContext, output_format: output.OutputFormat) -> None:
    """Exit 0 if the schema is current, 4 if migrations are pending."""
    with ctx.database() as conn:
        manager = schema.SchemaManager(conn, schema=ctx.settings.db_schema)
        applied = manager.applied()
        pending = manager.pending()
        conn.rollback()
    data = {
        "schema": ctx.settings.db_schema,
        "current": max((m.version for m in applied), default=None),
        "required": schema.required_version(),
        "pending": [f"{v:04d}_{n}" for v, n in pending],
    }
    if output_format == "json":
        output.echo_json(data)
    else:
        click.echo(
            f"schema {data['schema']!r}: version {data['current']}, "
            f"required {data['required']}, pending {len(pending)}"
        )
    if pending:
        manager.check()  # raises SchemaNotInstalled -> exit code 4
