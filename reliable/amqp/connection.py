"""
Connection parameters and the translation of pika errors into `reliable.errors`.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import pika
import pika.compat
import pika.exceptions
import pika.spec

from reliable import errors
from reliable.redact import redact_text, redact_url

logger = logging.getLogger(__name__)


def connection_parameters(
    url: str, *, heartbeat_seconds: int = 60, connect_timeout_seconds: float = 10.0
) -> pika.URLParameters:
    """Build pika parameters from *url*, raising `ConfigError` for a malformed URL."""
    try:
        params = pika.URLParameters(url)
    except Exception as exc:  # pika raises assorted ValueErrors for bad URLs
        msg = f"invalid AMQP URL {redact_url(url)!r}: {redact_text(str(exc))}"
        raise errors.ConfigError(msg, key="amqp_url") from None
    params.heartbeat = heartbeat_seconds
    params.socket_timeout = connect_timeout_seconds
    params.stack_timeout = connect_timeout_seconds * 2
    params.blocked_connection_timeout = 60
    params.connection_attempts = 1
    params.client_properties = {"connection_name": "reliable"}
    return params


def vhost_url(url: str, vhost: str) -> str:
    """
    Return *url* pointing at *vhost* (path-encoded, so ``/`` becomes ``%2F``).

    >>> vhost_url("amqp://u:p@host:5672/%2F", "orders")
    'amqp://u:p@host:5672/orders'
    """
    parts = urlsplit(url)
    path = "/" + quote(vhost, safe="")
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, parts.fragment))


def refused(what: str, exc: Any) -> errors.BrokerRefused:
    return errors.BrokerRefused(
        f"{what}: broker refused with {exc.reply_code} {exc.reply_text}",
        reply_code=exc.reply_code,
        reply_text=exc.reply_text,
    )


def connection_error(exc: BaseException, url: str) -> errors.BrokerError:
    where = redact_url(url)
    if isinstance(
        exc,
        pika.exceptions.ProbableAuthenticationError
        | pika.exceptions.AuthenticationError,
    ):
        return errors.BrokerConnectionError(
            f"RabbitMQ at {where} refused the login; check the user and password in the AMQP URL"
        )
    if isinstance(exc, pika.exceptions.ProbableAccessDeniedError):
        return errors.BrokerConnectionError(
            f"RabbitMQ at {where} denied access to the vhost; check the vhost and the user's permissions"
        )
    if isinstance(exc, pika.exceptions.ConnectionClosedByBroker):
        return errors.BrokerRefused(
            f"RabbitMQ at {where} closed the connection: {exc.reply_code} {exc.reply_text}",
            reply_code=exc.reply_code,
            reply_text=exc.reply_text,
        )
    detail = redact_text(str(exc)) or type(exc).__name__
    return errors.BrokerConnectionError(
        f"cannot reach RabbitMQ at {where} ({detail}); check that it runs and the URL is right"
    )
