"""
Settings for the toolkit, and the only place that reads the environment.

Library objects take explicit keyword arguments; `Settings.from_env()` exists
for the CLI and for `Reliable.from_env()`.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

from reliable import errors
from reliable.redact import redact_url

DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
DEFAULT_MANAGEMENT_URL = "http://guest:guest@127.0.0.1:15672"
DEFAULT_DATABASE_URL = ""  # empty: libpq's PG* variables and defaults decide
DEFAULT_DB_SCHEMA = "reliable"

_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """Connection URLs and tuning knobs shared by the library and the CLI."""

    amqp_url: str = DEFAULT_AMQP_URL
    management_url: str = DEFAULT_MANAGEMENT_URL
    database_url: str = DEFAULT_DATABASE_URL
    #: PostgreSQL schema that holds the reliable tables.
    db_schema: str = DEFAULT_DB_SCHEMA
    outbox_batch_size: int = 500
    outbox_poll_interval_seconds: float = 1.0
    confirm_timeout_seconds: float = 30.0
    inbox_retention_seconds: float = 7 * 24 * 3600.0
    metrics_port: int | None = None
    log_level: str = "INFO"

    def __post_init__(self) -> None:
        if not _SCHEMA_NAME.match(self.db_schema):
            msg = (
                f"db_schema {self.db_schema!r} is not a plain lower-case identifier; "
                "use letters, digits and underscores"
            )
            raise errors.ConfigError(msg, key="db_schema")
        if self.outbox_batch_size < 1:
            msg = f"outbox_batch_size must be at least 1, got {self.outbox_batch_size}"
            raise errors.ConfigError(msg, key="outbox_batch_size")

    def __repr__(self) -> str:
        fields = []
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name.endswith("_url") and isinstance(value, str):
                value = redact_url(value)
            fields.append(f"{field.name}={value!r}")
        return f"Settings({', '.join(fields)})"

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, *, prefix: str = "RELIABLE_"
    ) -> Settings:
        """
        Build settings from ``RELIABLE_*`` variables; unset ones keep their defaults.

        Raises:
            reliable.errors.ConfigError: A variable has a value of the wrong type.
        """
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        text = {
            "amqp_url": "AMQP_URL",
            "management_url": "MANAGEMENT_URL",
            "database_url": "DATABASE_URL",
            "db_schema": "DB_SCHEMA",
            "log_level": "LOG_LEVEL",
        }
        for field, var in text.items():
            if prefix + var in env:
                values[field] = env[prefix + var]
        numbers: dict[str, tuple[str, type[int] | type[float]]] = {
            "outbox_batch_size": ("OUTBOX_BATCH_SIZE", int),
            "outbox_poll_interval_seconds": ("OUTBOX_POLL_INTERVAL", float),
            "confirm_timeout_seconds": ("CONFIRM_TIMEOUT", float),
            "inbox_retention_seconds": ("INBOX_RETENTION", float),
            "metrics_port": ("METRICS_PORT", int),
        }
        for field, (var, kind) in numbers.items():
            raw = env.get(prefix + var)
            if raw is None or raw == "":
                continue
            try:
                values[field] = kind(raw)
            except ValueError:
                msg = (
                    f"{prefix + var}={raw!r} is not a valid {kind.__name__}; "
                    "set a number or unset the variable"
                )
                raise errors.ConfigError(msg, key=prefix + var) from None
        return cls(**values)  # type: ignore[arg-type]  # keys are the field names above
