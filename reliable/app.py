"""
`Reliable`: the one object an application builds and passes around.

It holds the settings, the metrics registry and the Celery app, and exposes
the outbox (and, as they are built, the inbox, the task decorator and the DLQ
tooling). Building it does no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from reliable import db
from reliable.config import DEFAULT_AMQP_URL, DEFAULT_MANAGEMENT_URL, Settings
from reliable.metrics import Metrics
from reliable.outbox import Outbox


class Reliable:
    """
    Entry point of the library.

    ::

        rel = Reliable(database_url=dsn, amqp_url=url, celery_app=app)
        with psycopg.connect(dsn) as conn, conn.transaction():
            rel.outbox.publish(
                conn,
                exchange="shop.events",
                routing_key="order.created",
                body={"id": 42},
            )

    Args:
        database_url: PostgreSQL URL (empty: libpq's ``PG*`` variables).
        amqp_url: RabbitMQ URL; write the default vhost as ``%2F``.
        management_url: RabbitMQ management API URL.
        celery_app: The application's Celery app (optional; needed for tasks
            and `Outbox.enqueue`).
        db_schema: Schema of the reliable tables.
        settings: A full `Settings`; the URL arguments above override it.
        metrics: Where to record metrics; a private registry by default.

    .. versionadded:: 0.1.0
    """

    def __init__(
        self,
        *,
        database_url: str | None = None,
        amqp_url: str | None = None,
        management_url: str | None = None,
        celery_app: Any = None,
        db_schema: str | None = None,
        settings: Settings | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        base = settings or Settings()
        overrides: dict[str, Any] = {
            k: v
            for k, v in {
                "database_url": database_url,
                "amqp_url": amqp_url,
                "management_url": management_url,
                "db_schema": db_schema,
            }.items()
            if v is not None
        }
        if overrides:
            fields = {
                name: getattr(base, name) for name in Settings.__dataclass_fields__
            }
            base = Settings(**{**fields, **overrides})
        self.settings = base
        self.celery_app = celery_app
        self.metrics = metrics if metrics is not None else Metrics()
        self.outbox = Outbox(schema=base.db_schema, celery_app=celery_app)

    @classmethod
    def from_env(
        cls, *, celery_app: Any = None, environ: Mapping[str, str] | None = None
    ) -> Reliable:
        """Build from ``RELIABLE_*`` environment variables (see `Settings.from_env`)."""
        return cls(settings=Settings.from_env(environ), celery_app=celery_app)

    def __repr__(self) -> str:
        return f"Reliable({self.settings!r})"

    def connect(self, *, autocommit: bool = False) -> db.Connection:
        """Open a new PostgreSQL connection with the configured URL (the caller closes it)."""
        return db.connect(self.settings.database_url, autocommit=autocommit)

    @property
    def amqp_url(self) -> str:
        return self.settings.amqp_url or DEFAULT_AMQP_URL

    @property
    def management_url(self) -> str:
        return self.settings.management_url or DEFAULT_MANAGEMENT_URL
