"""
Versioned SQL migrations shipped in the package (``reliable/sql/migrations``).

Migration ``NNNN_name.sql`` runs once, in order, inside one transaction per
``migrate()`` call under an advisory lock, so two deploys migrating at the same
time do not race. Tables live in a configurable schema (default ``reliable``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from reliable import db, errors, sql

logger = logging.getLogger(__name__)

#: Arbitrary constant: the advisory lock that serialises migrations.
_MIGRATION_LOCK = 0x7265_6C69


@dataclass(frozen=True, slots=True)
class AppliedMigration:
    version: int
    name: str
    applied_at: datetime | None


def required_version() -> int:
    """The newest migration this version of the package ships."""
    return max(v for v, _, _ in sql.migrations())


class SchemaManager:
    """Install, inspect and check the reliable tables in *schema*."""

    def __init__(self, conn: db.Connection, *, schema: str = "reliable") -> None:
        self._conn = conn
        self._schema = schema

    def applied(self) -> list[AppliedMigration]:
        """Migrations recorded in the database, oldest first (empty if none)."""
        table = f"{self._schema}.reliable_schema_version"
        rows = db.query(
            self._conn,
            "schema_version_table_exists",
            {"table": table},
            schema=self._schema,
        )
        if not rows or not rows[0]["present"]:
            return []
        return [
            AppliedMigration(r["version"], r["name"], r["applied_at"])
            for r in db.query(self._conn, "schema_versions", schema=self._schema)
        ]

    def current_version(self) -> int | None:
        applied = self.applied()
        return max(m.version for m in applied) if applied else None

    def pending(self) -> list[tuple[int, str]]:
        done = {m.version for m in self.applied()}
        return [(v, n) for v, n, _ in sql.migrations() if v not in done]

    def migrate(self) -> list[tuple[int, str]]:
        """
        Apply every pending migration in one transaction and return them.

        Raises:
            reliable.errors.DatabaseError: A migration failed; nothing was applied.
        """
        with db.transaction(self._conn):
            with db.translate_errors():
                self._conn.execute(
                    "SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,)
                )
            pending = self.pending()
            scripts = {v: s for v, _, s in sql.migrations()}
            for version, name in pending:
                logger.info(
                    "applying migration %04d_%s",
                    version,
                    name,
                    extra={"action": "db_migrate", "version": version},
                )
                db.execute_script(self._conn, scripts[version], schema=self._schema)
                db.execute(
                    self._conn,
                    "record_schema_version",
                    {"version": version, "name": name},
                    schema=self._schema,
                )
        return pending

    def check(self) -> int:
        """
        Return the installed version, or raise if migrations are pending.

        Raises:
            reliable.errors.SchemaNotInstalled: Tables missing or older than required.
        """
        current = self.current_version()
        if self.pending():
            raise errors.SchemaNotInstalled(found=current, required=required_version())
        return current if current is not None else 0
