"""
`Reliable`: the one object an application builds and passes around.

It holds the settings, the metrics registry and the Celery app, and exposes
the outbox (and, as they are built, the inbox, the task decorator and the DLQ
tooling). Building it does no I/O.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, overload

from reliable import db
from reliable.config import DEFAULT_AMQP_URL, DEFAULT_MANAGEMENT_URL, Settings
from reliable.inbox import Inbox
from reliable.metrics import Metrics
from reliable.outbox import Outbox

if TYPE_CHECKING:
    from reliable.relay import OutboxRelay, RelayConfig
    from reliable.retry import RetryPolicy


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
        self.inbox = Inbox(schema=base.db_schema, metrics=self.metrics)
        self._startup_check_connected = False

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

    def relay(
        self,
        *,
        config: RelayConfig | None = None,
        retry_policy: RetryPolicy | None = None,
    ) -> OutboxRelay:
        """
        Build an `OutboxRelay` for this app's database, broker, schema and metrics.

        ::

            relay = rel.relay()
            relay.run_once()  # or relay.run() until relay.stop()

        Batch size, poll interval and confirm timeout default to the settings.
        """
        from reliable.relay import OutboxRelay, RelayConfig

        s = self.settings
        if config is None:
            config = RelayConfig(
                batch_size=s.outbox_batch_size,
                poll_interval_seconds=s.outbox_poll_interval_seconds,
                confirm_timeout_seconds=s.confirm_timeout_seconds,
                lease_seconds=max(60.0, s.confirm_timeout_seconds * 2),
            )
        return OutboxRelay(
            database_url=s.database_url,
            amqp_url=self.amqp_url,
            schema=s.db_schema,
            config=config,
            retry_policy=retry_policy,
            metrics=self.metrics,
        )

    # -- effectively-once tasks (reliable.tasks) ------------------------------------

    @functools.cached_property
    def task_connections(self) -> db.ProcessLocalConnection:
        """The connections task bodies run in: one per worker process and thread, opened lazily."""
        return db.ProcessLocalConnection(self.settings.database_url)

    @overload
    def task(self, body: Callable[..., Any], /) -> Any: ...

    @overload
    def task(self, **options: Any) -> Callable[[Callable[..., Any]], Any]: ...

    def task(self, *args: Any, **options: Any) -> Any:
        """
        Declare an effectively-once Celery task; use as ``@rel.task`` or ``@rel.task(...)``.

        ::

            @rel.task(
                queue="payments", autoretry_for=(PaymentDown,), retry_backoff=True
            )
            def charge(conn, order_id):
                conn.execute("insert into charges ...")
                rel.outbox.enqueue(conn, ship.s(order_id))

        The body's first parameter is a psycopg connection inside the task's
        transaction (after ``self`` with ``bind=True``). Per delivery: begin,
        claim (consumer, message key) in the inbox, run the body, store its
        result, commit, then Celery acks. A duplicate (the claim exists) skips
        the body and returns the stored result; a failure rolls back
        everything, and once Celery stops retrying the message is rejected to
        the queue's dead-letter exchange and the failure is recorded in
        ``reliable_task_failures``.

        Every Celery task option is accepted, plus:

        Args:
            consumer: Inbox consumer name (default: the task name).
            dedupe_key: ``lambda *args, **kwargs: key``: deduplicate on a
                business key instead of the task id.
            result_max_bytes: Largest JSON result stored for duplicates (64 KiB).

        Returns:
            A real Celery task (``delay``, ``apply_async``, signatures, canvas).

        Raises:
            ValueError: An option contradicts the settings these tasks need
                (``acks_late=False``, ``reject_on_worker_lost=False``, ...).

        .. versionadded:: 0.1.0
        """
        from reliable import tasks  # Celery is imported only when tasks are declared

        if not self._startup_check_connected and self.celery_app is not None:
            tasks.connect_startup_check(self)
            self._startup_check_connected = True
        if len(args) == 1 and callable(args[0]) and not options:
            return tasks.make_task(self, args[0], {})
        if args:
            msg = "rel.task takes only keyword options; use @rel.task or @rel.task(queue=...)"
            raise TypeError(msg)

        def decorate(body: Callable[..., Any]) -> Any:
            return tasks.make_task(self, body, options)

        return decorate
