"""
The blocking `Channel`: declares, passive checks, ``basic.get``/ack, consuming.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator, Mapping
from typing import Any

import pika
import pika.compat
import pika.exceptions
import pika.spec

from reliable import errors
from reliable.amqp.connection import connection_error, connection_parameters, refused
from reliable.amqp.messages import (
    IncomingMessage,
    OutgoingMessage,
    Properties,
    QueueState,
)

logger = logging.getLogger(__name__)

#: Exchanges that always exist.
_BUILTIN_EXCHANGE = re.compile(r"^(|amq\..*)$")

# -- the blocking channel ---------------------------------------------------------


class Channel:
    """A blocking channel with typed operations; reopened after a soft (406/404) close."""

    def __init__(self, connection: Any, url: str) -> None:
        self._connection = connection
        self._url = url
        self._channel = connection.channel()

    @property
    def raw_is_open(self) -> bool:
        return bool(self._channel.is_open)

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        if not self._channel.is_open:
            self._channel = self._connection.channel()
        try:
            return fn(self._channel, *args, **kwargs)
        except pika.exceptions.ChannelClosedByBroker as exc:
            self._channel = self._connection.channel()
            raise refused(what, exc) from None
        except pika.exceptions.AMQPError as exc:
            raise connection_error(exc, self._url) from None

    def declare_exchange(
        self,
        name: str,
        *,
        type: str = "direct",
        durable: bool = True,
        auto_delete: bool = False,
        internal: bool = False,
        arguments: Mapping[str, Any] | None = None,
    ) -> None:
        self._call(
            f"declare exchange {name!r}",
            lambda ch: ch.exchange_declare(
                name,
                exchange_type=type,
                durable=durable,
                auto_delete=auto_delete,
                internal=internal,
                arguments=dict(arguments or {}),
            ),
        )

    def declare_queue(
        self,
        name: str,
        *,
        durable: bool = True,
        exclusive: bool = False,
        auto_delete: bool = False,
        arguments: Mapping[str, Any] | None = None,
    ) -> QueueState:
        frame = self._call(
            f"declare queue {name!r}",
            lambda ch: ch.queue_declare(
                name,
                durable=durable,
                exclusive=exclusive,
                auto_delete=auto_delete,
                arguments=dict(arguments or {}),
            ),
        )
        return QueueState(
            frame.method.queue, frame.method.message_count, frame.method.consumer_count
        )

    def queue_state(self, name: str) -> QueueState | None:
        """Return the live message count of *name*, or ``None`` if it does not exist."""
        try:
            frame = self._call(
                f"check queue {name!r}", lambda ch: ch.queue_declare(name, passive=True)
            )
        except errors.BrokerRefused as exc:
            if exc.reply_code == 404:
                return None
            raise
        return QueueState(name, frame.method.message_count, frame.method.consumer_count)

    def exchange_exists(self, name: str) -> bool:
        if _BUILTIN_EXCHANGE.match(name):
            return True
        try:
            self._call(
                f"check exchange {name!r}",
                lambda ch: ch.exchange_declare(name, passive=True),
            )
        except errors.BrokerRefused as exc:
            if exc.reply_code == 404:
                return False
            raise
        return True

    def bind_queue(
        self,
        queue: str,
        exchange: str,
        routing_key: str = "",
        arguments: Mapping[str, Any] | None = None,
    ) -> None:
        self._call(
            f"bind queue {queue!r} to {exchange!r}",
            lambda ch: ch.queue_bind(
                queue, exchange, routing_key, dict(arguments or {})
            ),
        )

    def unbind_queue(
        self,
        queue: str,
        exchange: str,
        routing_key: str = "",
        arguments: Mapping[str, Any] | None = None,
    ) -> None:
        self._call(
            f"unbind queue {queue!r} from {exchange!r}",
            lambda ch: ch.queue_unbind(
                queue, exchange, routing_key, dict(arguments or {})
            ),
        )

    def bind_exchange(
        self,
        destination: str,
        source: str,
        routing_key: str = "",
        arguments: Mapping[str, Any] | None = None,
    ) -> None:
        self._call(
            f"bind exchange {destination!r} to {source!r}",
            lambda ch: ch.exchange_bind(
                destination, source, routing_key, dict(arguments or {})
            ),
        )

    def unbind_exchange(
        self,
        destination: str,
        source: str,
        routing_key: str = "",
        arguments: Mapping[str, Any] | None = None,
    ) -> None:
        self._call(
            f"unbind exchange {destination!r} from {source!r}",
            lambda ch: ch.exchange_unbind(
                destination, source, routing_key, dict(arguments or {})
            ),
        )

    def delete_queue(self, name: str, *, if_empty: bool = False) -> int:
        frame = self._call(
            f"delete queue {name!r}",
            lambda ch: ch.queue_delete(name, if_empty=if_empty),
        )
        return int(frame.method.message_count)

    def delete_exchange(self, name: str) -> None:
        self._call(f"delete exchange {name!r}", lambda ch: ch.exchange_delete(name))

    def purge_queue(self, name: str) -> int:
        frame = self._call(f"purge queue {name!r}", lambda ch: ch.queue_purge(name))
        return int(frame.method.message_count)

    def qos(self, prefetch_count: int) -> None:
        # Per-consumer QoS (global=False): quorum queues refuse global QoS with 540.
        self._call("set qos", lambda ch: ch.basic_qos(prefetch_count=prefetch_count))

    def get(self, queue: str) -> IncomingMessage | None:
        """Take one message from *queue* without acking it, or ``None`` if it is empty."""
        method, props, body = self._call(
            f"get from queue {queue!r}", lambda ch: ch.basic_get(queue, auto_ack=False)
        )
        if method is None:
            return None
        return IncomingMessage(
            delivery_tag=method.delivery_tag,
            redelivered=bool(method.redelivered),
            exchange=method.exchange,
            routing_key=method.routing_key,
            body=bytes(body or b""),
            properties=Properties.from_pika(props),
            message_count=method.message_count,
        )

    def consume(
        self, queue: str, *, prefetch_count: int = 100, inactivity_seconds: float = 1.0
    ) -> Iterator[IncomingMessage]:
        """Yield messages from *queue* until none arrives for *inactivity_seconds*."""
        self.qos(prefetch_count)
        iterator = self._call(
            f"consume from queue {queue!r}",
            lambda ch: ch.consume(
                queue, auto_ack=False, inactivity_timeout=inactivity_seconds
            ),
        )
        try:
            for method, props, body in iterator:
                if method is None:
                    return
                yield IncomingMessage(
                    delivery_tag=method.delivery_tag,
                    redelivered=bool(method.redelivered),
                    exchange=method.exchange,
                    routing_key=method.routing_key,
                    body=bytes(body or b""),
                    properties=Properties.from_pika(props),
                )
        except pika.exceptions.ChannelClosedByBroker as exc:
            self._channel = self._connection.channel()
            msg = f"consume from queue {queue!r}"
            raise refused(msg, exc) from None
        except pika.exceptions.AMQPError as exc:
            raise connection_error(exc, self._url) from None

    def cancel(self) -> None:
        """Stop consuming; unacked messages stay unacked until acked, nacked or the channel closes."""
        self._call("cancel consumer", lambda ch: ch.cancel())

    def ack(self, delivery_tag: int, *, multiple: bool = False) -> None:
        self._call("ack", lambda ch: ch.basic_ack(delivery_tag, multiple=multiple))

    def nack(self, delivery_tag: int, *, requeue: bool, multiple: bool = False) -> None:
        self._call(
            "nack",
            lambda ch: ch.basic_nack(delivery_tag, multiple=multiple, requeue=requeue),
        )

    def publish(self, message: OutgoingMessage) -> None:
        """Publish one message without confirms (tests and fixtures only)."""
        self._call(
            "publish",
            lambda ch: ch.basic_publish(
                message.exchange,
                message.routing_key,
                message.body,
                message.properties.to_pika(),
            ),
        )

    def close(self) -> None:
        """Close this channel: unacked messages go back to their queues."""
        with contextlib.suppress(Exception):
            if self._channel.is_open:
                self._channel.close()


@contextlib.contextmanager
def open_channel(
    url: str, *, connect_timeout_seconds: float = 10.0
) -> Iterator[Channel]:
    """
    Open a blocking connection and channel to *url*; close both on exit.

    Raises:
        reliable.errors.BrokerConnectionError: RabbitMQ cannot be reached or
            refused the login.
    """
    params = connection_parameters(url, connect_timeout_seconds=connect_timeout_seconds)
    try:
        connection = pika.BlockingConnection(params)
    except Exception as exc:
        raise connection_error(exc, url) from None
    try:
        yield Channel(connection, url)
    finally:
        with contextlib.suppress(Exception):
            connection.close()
