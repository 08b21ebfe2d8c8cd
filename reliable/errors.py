"""
Every error the toolkit raises on purpose derives from `ReliableError`.

Driver errors (pika, psycopg, httpx) are translated into these classes in the
one boundary module that owns each driver, so callers never need to import a
driver to handle a failure. The CLI maps each family to an exit code
(`reliable.cli.exit_codes`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence


class ReliableError(Exception):
    """Something went wrong in reliable."""

    def __init__(self, message: str | None = None) -> None:
        doc = (type(self).__doc__ or "").strip().splitlines()
        default = doc[0].rstrip(".") if doc else type(self).__name__
        super().__init__(message or default[:1].lower() + default[1:])

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""


# -- configuration -----------------------------------------------------------


class ConfigError(ReliableError):
    """A setting is missing or has an invalid value."""

    def __init__(self, message: str | None = None, *, key: str | None = None) -> None:
        self.key = key
        super().__init__(message)


# -- topology ------------------------------------------------------------------


class TopologyError(ReliableError):
    """The topology cannot be used as it is."""


class TopologyFileError(TopologyError):
    """A topology file cannot be read or does not validate."""

    def __init__(
        self,
        message: str | None = None,
        *,
        path: str | None = None,
        problems: Sequence[tuple[str, str]] = (),
    ) -> None:
        self.path = path
        self.problems = list(problems)
        if message is None and self.problems:
            message = "; ".join(f"{loc}: {msg}" for loc, msg in self.problems)
        super().__init__(message)


class TopologyConflict(TopologyError):
    """The broker already has this entity, declared with different arguments."""

    def __init__(
        self,
        message: str | None = None,
        *,
        entity: str,
        expected: Mapping[str, object],
        actual: Mapping[str, object],
    ) -> None:
        self.entity = entity
        self.expected = dict(expected)
        self.actual = dict(actual)
        if message is None:
            keys = sorted(set(self.expected) | set(self.actual))
            diff = ", ".join(
                f"{k}: {self.actual.get(k)!r} -> {self.expected.get(k)!r}"
                for k in keys
                if self.actual.get(k) != self.expected.get(k)
            )
            message = (
                f"{entity} exists with different arguments ({diff}); "
                "delete it or change the topology"
            )
        super().__init__(message)


# -- broker ----------------------------------------------------------------------


class BrokerError(ReliableError):
    """RabbitMQ could not do what was asked."""


class BrokerConnectionError(BrokerError):
    """Cannot connect to RabbitMQ, or the connection was lost."""


class BrokerRefused(BrokerError):
    """RabbitMQ closed the channel or connection in answer to an operation."""

    def __init__(
        self, message: str | None = None, *, reply_code: int = 0, reply_text: str = ""
    ) -> None:
        self.reply_code = reply_code
        self.reply_text = reply_text
        if message is None:
            message = f"broker refused the operation: {reply_code} {reply_text}"
        super().__init__(message)


class QueueNotFound(BrokerRefused):
    """A queue the operation needs does not exist."""

    def __init__(self, message: str | None = None, *, queue: str = "") -> None:
        self.queue = queue
        if message is None:
            message = f"queue {queue!r} does not exist; check the name and the vhost in the AMQP URL"
        super().__init__(message, reply_code=404, reply_text="NOT_FOUND")


class ExchangeNotFound(BrokerRefused):
    """An exchange the operation needs does not exist."""

    def __init__(self, message: str | None = None, *, exchange: str = "") -> None:
        self.exchange = exchange
        if message is None:
            message = f"exchange {exchange!r} does not exist; check the name and the vhost in the AMQP URL"
        super().__init__(message, reply_code=404, reply_text="NOT_FOUND")


class PublishNotConfirmed(BrokerError):
    """RabbitMQ nacked a publish, or its confirm did not arrive in time."""

    def __init__(self, message: str | None = None, *, message_id: str = "") -> None:
        self.message_id = message_id
        super().__init__(message)


class UnroutableMessage(BrokerError):
    """A mandatory publish matched no queue and was returned."""

    def __init__(
        self, message: str | None = None, *, exchange: str = "", routing_key: str = ""
    ) -> None:
        self.exchange = exchange
        self.routing_key = routing_key
        super().__init__(message)


class ApplyIncomplete(BrokerError):
    """The broker failed part-way through ``topology apply``; re-run it to converge."""

    def __init__(
        self,
        message: str | None = None,
        *,
        applied: Sequence[str] = (),
        failed: str = "",
        reply_code: int | None = None,
    ) -> None:
        self.applied = list(applied)
        self.failed = failed
        self.reply_code = reply_code
        super().__init__(message)


class ManagementAPIError(BrokerError):
    """The RabbitMQ management HTTP API failed or is unreachable."""

    def __init__(
        self, message: str | None = None, *, status: int | None = None, url: str = ""
    ) -> None:
        self.status = status
        self.url = url
        super().__init__(message)


# -- database --------------------------------------------------------------------


class DatabaseError(ReliableError):
    """PostgreSQL could not do what was asked."""


class SchemaNotInstalled(DatabaseError):
    """The reliable tables are missing or older than this version needs."""

    def __init__(
        self, message: str | None = None, *, found: int | None = None, required: int = 0
    ) -> None:
        self.found = found
        self.required = required
        if message is None:
            message = (
                f"database schema version is {found!r}, this version needs {required}; "
                "run 'reliable db migrate'"
            )
        super().__init__(message)


# -- messages --------------------------------------------------------------------


class DecodeError(ReliableError):
    """A message body or its headers cannot be decoded."""

    def __init__(
        self, message: str | None = None, *, body: bytes = b"", reason: str = ""
    ) -> None:
        self.body = body
        self.reason = reason
        super().__init__(message)


class ReplayError(ReliableError):
    """A dead letter cannot be replayed."""

    def __init__(self, message: str | None = None, *, delivery_tag: int = 0) -> None:
        self.delivery_tag = delivery_tag
        super().__init__(message)
