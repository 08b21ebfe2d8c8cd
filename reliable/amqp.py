"""
The AMQP boundary: the only module that imports pika.

Two kinds of connection live here:

* `open_channel()` gives a blocking `Channel` for declares, passive checks,
  ``basic.get``/ack and consuming (topology apply, DLQ tooling).
* `ConfirmingPublisher` drives a pika ``SelectConnection`` so that many
  publishes are in flight before their confirms are awaited. pika's blocking
  ``confirm_delivery()`` waits for every message on its own, which caps a
  publisher at one round trip per message (see rabbitmq-celery-facts §4.2).

Every pika exception is translated into `reliable.errors` here.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal
from urllib.parse import quote, urlsplit, urlunsplit

import pika
import pika.compat
import pika.exceptions
import pika.spec

from reliable import errors
from reliable.redact import redact_text, redact_url

logger = logging.getLogger(__name__)

#: Exchanges that always exist and need no existence probe.
_BUILTIN_EXCHANGE = re.compile(r"^(|amq\..*)$")
_NO_EXCHANGE = re.compile(r"no exchange '(?P<name>[^']*)'")
#: How long a positive exchange probe is trusted before it is repeated.
_EXCHANGE_PROBE_TTL_SECONDS = 30.0


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


# -- messages ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Properties:
    """AMQP basic properties, with pika's names and types."""

    content_type: str | None = None
    content_encoding: str | None = None
    headers: Mapping[str, Any] | None = None
    delivery_mode: int | None = 2
    priority: int | None = None
    correlation_id: str | None = None
    reply_to: str | None = None
    expiration: str | None = None
    message_id: str | None = None
    timestamp: int | None = None
    type: str | None = None
    user_id: str | None = None
    app_id: str | None = None
    cluster_id: str | None = None

    def to_pika(self) -> pika.BasicProperties:
        return pika.BasicProperties(
            content_type=self.content_type,
            content_encoding=self.content_encoding,
            headers=dict(self.headers) if self.headers is not None else None,
            delivery_mode=self.delivery_mode,
            priority=self.priority,
            correlation_id=self.correlation_id,
            reply_to=self.reply_to,
            expiration=self.expiration,
            message_id=self.message_id,
            timestamp=self.timestamp,
            type=self.type,
            user_id=self.user_id,
            app_id=self.app_id,
            cluster_id=self.cluster_id,
        )

    @classmethod
    def from_pika(cls, props: pika.BasicProperties) -> Properties:
        return cls(
            content_type=props.content_type,
            content_encoding=props.content_encoding,
            headers=props.headers,
            delivery_mode=props.delivery_mode,
            priority=props.priority,
            correlation_id=props.correlation_id,
            reply_to=props.reply_to,
            expiration=props.expiration,
            message_id=props.message_id,
            timestamp=_timestamp(props.timestamp),
            type=props.type,
            user_id=props.user_id,
            app_id=props.app_id,
            cluster_id=props.cluster_id,
        )


def long_int(value: int) -> int:
    """
    *value* as pika's ``long`` (an ``int`` subclass), which pika encodes as a
    64-bit ``l`` field; a plain ``int`` is encoded as 32-bit ``I`` when it fits.
    Decoded ``l``/``L`` header values come back as this type.
    """
    return pika.compat.long(value)  # type: ignore[no-any-return]  # pika is untyped


def _timestamp(value: object) -> int | None:
    if isinstance(value, datetime):
        return int(value.timestamp())
    return value if isinstance(value, int) else None


@dataclass(frozen=True, slots=True, kw_only=True)
class OutgoingMessage:
    """A message to publish; `message_id` is how returns are matched to it."""

    exchange: str
    routing_key: str
    body: bytes
    properties: Properties = field(default_factory=Properties)

    @property
    def message_id(self) -> str:
        return self.properties.message_id or ""


@dataclass(frozen=True, slots=True, kw_only=True)
class IncomingMessage:
    """A message taken from a queue and not yet acknowledged."""

    delivery_tag: int
    redelivered: bool
    exchange: str
    routing_key: str
    body: bytes
    properties: Properties
    #: Ready messages left in the queue after this one (``basic.get`` only).
    message_count: int | None = None


Status = Literal["confirmed", "returned", "nacked", "refused", "unconfirmed"]


@dataclass(slots=True)
class Outcome:
    """What became of one published message."""

    status: Status = "unconfirmed"
    reason: str = ""


@dataclass(slots=True)
class PublishResult:
    """Outcomes aligned with the messages given to `ConfirmingPublisher.publish_batch`."""

    outcomes: list[Outcome]

    def indexes(self, status: Status) -> list[int]:
        return [i for i, o in enumerate(self.outcomes) if o.status == status]

    @property
    def confirmed(self) -> list[int]:
        return self.indexes("confirmed")

    @property
    def all_confirmed(self) -> bool:
        return all(o.status == "confirmed" for o in self.outcomes)


# -- the pipelined publisher ---------------------------------------------------------


class ConfirmingPublisher:
    """
    Publish batches with ``mandatory`` and pipelined publisher confirms.

    ``publish_batch`` keeps up to *window* messages unconfirmed, sends more as
    confirms arrive and returns when every message has an outcome or the
    timeout has passed. A message is ``confirmed`` only when the broker acked
    it and did not return it; a returned (unroutable) message is ``returned``,
    a message to an exchange that does not exist is ``refused`` without being
    sent, and anything still open at the timeout or at a connection loss is
    ``unconfirmed``: its fate is unknown, so callers must send it again.

    Not thread-safe: one publisher per thread.
    """

    def __init__(
        self,
        url: str,
        *,
        window: int = 500,
        heartbeat_seconds: int = 60,
        connect_timeout_seconds: float = 10.0,
    ) -> None:
        if window < 1:
            msg = f"window must be at least 1, got {window}"
            raise ValueError(msg)
        self._params = connection_parameters(
            url,
            heartbeat_seconds=heartbeat_seconds,
            connect_timeout_seconds=connect_timeout_seconds,
        )
        self._url = url
        self._window = window
        self._connect_timeout = connect_timeout_seconds
        self._conn: Any = None
        self._channel: Any = None
        self._probe: Any = None
        self._closing = False
        self._closed_reason: str | None = None
        self._known_exchanges: dict[str, float] = {}
        self._batch: _Batch | None = None
        self._next_tag = 0
        self._probe_state: dict[str, bool] = {}

    def __repr__(self) -> str:
        return f"ConfirmingPublisher({redact_url(self._url)!r}, window={self._window})"

    # connection management

    @property
    def is_open(self) -> bool:
        return bool(
            self._conn is not None
            and self._conn.is_open
            and self._channel is not None
            and self._channel.is_open
        )

    def connect(self) -> None:
        """Open the connection and a confirm-mode channel, or raise `BrokerConnectionError`."""
        if self.is_open:
            return
        self.close()
        self._closed_reason = None
        self._closing = False
        done: dict[str, Any] = {}

        def on_open(conn: Any) -> None:
            conn.channel(on_open_callback=on_channel)

        def on_channel(channel: Any) -> None:
            self._channel = channel
            self._next_tag = 0
            channel.add_on_return_callback(self._on_return)
            channel.add_on_close_callback(self._on_channel_closed)
            channel.confirm_delivery(self._on_confirm, callback=on_select_ok)

        def on_select_ok(_frame: Any) -> None:
            done["ok"] = True
            self._conn.ioloop.stop()

        def on_open_error(_conn: Any, exc: BaseException) -> None:
            done["error"] = exc
            self._conn.ioloop.stop()

        try:
            self._conn = pika.SelectConnection(
                self._params,
                on_open_callback=on_open,
                on_open_error_callback=on_open_error,
                on_close_callback=self._on_connection_closed,
            )
        except Exception as exc:
            raise _connection_error(exc, self._url) from None
        self._run(self._connect_timeout, lambda: bool(done))
        if not done.get("ok"):
            error = done.get("error")
            self.close()
            if error is None:
                msg = (
                    f"no answer from RabbitMQ at {redact_url(self._url)} within "
                    f"{self._connect_timeout:g}s; check the broker and the URL"
                )
                raise errors.BrokerConnectionError(msg)
            raise _connection_error(error, self._url) from None

    def close(self) -> None:
        """Close the connection, waiting briefly for the close handshake."""
        conn, self._conn = self._conn, None
        self._channel = None
        self._probe = None
        if conn is None:
            return
        self._closing = True
        try:
            if conn.is_open:
                conn.close()
                deadline = time.monotonic() + 5

                def stop_when_closed() -> None:
                    if conn.is_closed or time.monotonic() > deadline:
                        conn.ioloop.stop()
                    else:
                        conn.ioloop.call_later(0.01, stop_when_closed)

                conn.ioloop.call_later(0.01, stop_when_closed)
                conn.ioloop.start()
        except Exception:  # closing a broken connection must never raise
            logger.debug("error while closing publisher connection", exc_info=True)
        finally:
            with contextlib.suppress(Exception):
                conn.ioloop.close()

    def poll(self, seconds: float = 0.0) -> None:
        """Run the I/O loop for *seconds* so heartbeats are answered while idle."""
        if self._conn is not None:
            self._run(seconds, lambda: False)

    # publishing

    def publish_batch(
        self, messages: Sequence[OutgoingMessage], *, timeout_seconds: float = 30.0
    ) -> PublishResult:
        """
        Publish *messages* and wait for their confirms.

        Raises:
            reliable.errors.BrokerConnectionError: The connection could not be
                opened before anything was sent.
        """
        result = PublishResult([Outcome() for _ in messages])
        if not messages:
            return result
        self.connect()
        missing = self._missing_exchanges({m.exchange for m in messages})
        batch = _Batch(messages=messages, result=result)
        for i, message in enumerate(messages):
            if message.exchange in missing:
                result.outcomes[i] = Outcome(
                    "refused", f"no exchange {message.exchange!r}"
                )
            else:
                batch.pending.append(i)
        self._batch = batch
        try:
            self._pump()
            self._run(timeout_seconds, batch.finished)
        finally:
            self._batch = None
        reason = self._closed_reason or f"no confirm within {timeout_seconds:g}s"
        for i in batch.in_flight.values():
            if result.outcomes[i].status == "unconfirmed":
                result.outcomes[i].reason = reason
        for i in batch.pending:
            result.outcomes[i].reason = reason
        for i in batch.returned:
            if result.outcomes[i].status == "confirmed":
                result.outcomes[i] = Outcome("returned", batch.returned[i])
        return result

    def _pump(self) -> None:
        batch = self._batch
        if batch is None or self._channel is None or not self._channel.is_open:
            return
        while batch.pending and len(batch.in_flight) < self._window:
            i = batch.pending.popleft()
            message = batch.messages[i]
            try:
                self._channel.basic_publish(
                    message.exchange,
                    message.routing_key,
                    message.body,
                    message.properties.to_pika(),
                    mandatory=True,
                )
            except Exception as exc:  # channel or connection went away under us
                batch.pending.appendleft(i)
                self._closed_reason = redact_text(str(exc)) or type(exc).__name__
                batch.broken = True
                return
            # Delivery tags count every publish on the channel since confirm.select.
            self._next_tag += 1
            batch.in_flight[self._next_tag] = i
            if message.message_id:
                batch.by_message_id.setdefault(message.message_id, []).append(i)
        self._coalesce_output()

    def _coalesce_output(self) -> None:
        """
        Join the frames queued by one pump into a single write buffer.

        pika's asynchronous transport sends every queued frame with its own
        ``send()`` call: three per message (method, header, body). Joining
        them before control returns to the I/O loop turns thousands of system
        calls per batch into a few; in the relay benchmark the per-frame sends
        were about 40 % of the relay's CPU time. Only touches pika's buffer
        deque when it has the expected shape.
        """
        transport = getattr(self._conn, "_transport", None)
        buffers = getattr(transport, "_tx_buffers", None)
        if isinstance(buffers, collections.deque) and len(buffers) > 1:
            joined = b"".join(buffers)
            buffers.clear()
            buffers.append(joined)

    def _on_confirm(self, frame: Any) -> None:
        batch = self._batch
        if batch is None:
            return
        method = frame.method
        acked = isinstance(method, pika.spec.Basic.Ack)
        tags = (
            [t for t in batch.in_flight if t <= method.delivery_tag]
            if method.multiple
            else [method.delivery_tag]
        )
        for tag in tags:
            i = batch.in_flight.pop(tag, None)
            if i is None:
                continue  # a late confirm from an earlier batch
            batch.result.outcomes[i] = (
                Outcome("confirmed") if acked else Outcome("nacked", "broker nacked")
            )
        self._pump()
        if batch.finished():
            self._conn.ioloop.stop()

    def _on_return(self, _channel: Any, method: Any, props: Any, body: bytes) -> None:
        batch = self._batch
        if batch is None:
            return
        reason = f"{method.reply_code} {method.reply_text}"
        if props.message_id:
            for i in batch.by_message_id.get(props.message_id, []):
                batch.returned[i] = reason
            return
        # Without a message_id (Celery sets none) the return is matched by
        # content; every identical in-flight message is marked, since a false
        # "returned" only leaves a message where it was, a missed one loses it.
        for i, message in enumerate(batch.messages):
            if (
                not message.message_id
                and message.exchange == method.exchange
                and message.routing_key == method.routing_key
                and message.body == body
            ):
                batch.returned[i] = reason

    def _on_channel_closed(self, _channel: Any, reason: BaseException) -> None:
        text = redact_text(str(reason))
        self._closed_reason = text
        match = _NO_EXCHANGE.search(text)
        if match:
            self._known_exchanges.pop(match["name"], None)
        if self._batch is not None:
            self._batch.broken = True
        if self._conn is not None and not self._closing:
            self._conn.ioloop.stop()
            # The next connect() opens a fresh connection and channel.
            with contextlib.suppress(Exception):
                self._conn.close()

    def _on_connection_closed(self, conn: Any, reason: BaseException) -> None:
        if not self._closing:
            self._closed_reason = redact_text(str(reason)) or "connection closed"
            if self._batch is not None:
                self._batch.broken = True
        conn.ioloop.stop()

    # exchange probes

    def _missing_exchanges(self, names: set[str]) -> set[str]:
        now = time.monotonic()
        unknown = sorted(
            n
            for n in names
            if not _BUILTIN_EXCHANGE.match(n)
            and now - self._known_exchanges.get(n, -1e9) > _EXCHANGE_PROBE_TTL_SECONDS
        )
        missing: set[str] = set()
        for name in unknown:
            found = self._probe_exchange(name)
            if found:
                self._known_exchanges[name] = now
            else:
                missing.add(name)
        return missing

    def _probe_exchange(self, name: str) -> bool:
        # The probe channel outlives one call, so its callbacks read the
        # current probe's state from self rather than from a closure.
        state: dict[str, bool] = {}
        self._probe_state = state

        def on_probe_open(channel: Any) -> None:
            self._probe = channel
            channel.add_on_close_callback(self._on_probe_closed)
            self._declare_probe(name)

        if self._probe is not None and self._probe.is_open:
            self._declare_probe(name)
        else:
            self._conn.channel(on_open_callback=on_probe_open)
        self._run(self._connect_timeout, lambda: bool(state))
        if "found" not in state:
            # Could not tell: treat as present and let the publish decide.
            return True
        return state["found"]

    def _declare_probe(self, name: str) -> None:
        def on_ok(_frame: Any) -> None:
            self._probe_state["found"] = True
            self._conn.ioloop.stop()

        self._probe.exchange_declare(name, passive=True, callback=on_ok)

    def _on_probe_closed(self, _channel: Any, reason: BaseException) -> None:
        self._probe = None
        if getattr(reason, "reply_code", None) == 404:
            self._probe_state["found"] = False
        else:
            self._probe_state.setdefault("error", True)
        if self._conn is not None:
            self._conn.ioloop.stop()

    def _run(self, seconds: float, done: Any) -> None:
        """
        Drive the I/O loop until *done()* is true, the connection closes, or time runs out.

        Callbacks stop the loop whenever something may have finished; a stop
        requested while the loop was not running makes the next start return
        at once, so the loop is restarted until the condition really holds.
        """
        deadline = time.monotonic() + max(seconds, 0.0)
        while True:
            conn = self._conn
            if conn is None or conn.is_closed or done():
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            timer = conn.ioloop.call_later(remaining, conn.ioloop.stop)
            try:
                conn.ioloop.start()
            except Exception as exc:
                self._closed_reason = redact_text(str(exc)) or type(exc).__name__
                if self._batch is not None:
                    self._batch.broken = True
                return
            finally:
                with contextlib.suppress(Exception):
                    conn.ioloop.remove_timeout(timer)


@dataclass(slots=True)
class _Batch:
    messages: Sequence[OutgoingMessage]
    result: PublishResult
    pending: Any = None  # collections.deque[int], set in __post_init__
    in_flight: dict[int, int] = field(default_factory=dict)
    by_message_id: dict[str, list[int]] = field(default_factory=dict)
    returned: dict[int, str] = field(default_factory=dict)
    broken: bool = False

    def __post_init__(self) -> None:
        import collections

        self.pending = collections.deque()

    def finished(self) -> bool:
        return self.broken or (not self.pending and not self.in_flight)


# -- the blocking channel ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class QueueState:
    """What a passive ``queue.declare`` tells: read from the queue itself, not from statistics."""

    name: str
    message_count: int
    consumer_count: int


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
            raise _refused(what, exc) from None
        except pika.exceptions.AMQPError as exc:
            raise _connection_error(exc, self._url) from None

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
            raise _refused(msg, exc) from None
        except pika.exceptions.AMQPError as exc:
            raise _connection_error(exc, self._url) from None

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


class QueueReader:
    """
    Take messages from one queue and hold them unacknowledged until told otherwise.

    Built for tools that look at a queue without consuming it: whatever is not
    acked goes back when the reader closes. Closing the channel (rather than
    ``basic.nack(requeue=True)``) matters: a classic queue puts returned messages
    back at their old positions, and a quorum queue puts channel-close returns
    at the front in order, while a nack-requeue on a quorum queue (3.10+, no
    delivery limit) appends them at the back. Quorum queues count each return
    in ``x-delivery-count``.

    Held messages use up a consumer's prefetch. When every slot is held the
    reader opens another channel with a consumer of its own rather than
    cancelling the first: a quorum queue returned the messages of several
    consumers on one channel in no fixed order when that channel closed
    (seen on 3.10.8). On close the reader stops every consumer, then closes
    the channels oldest first, waiting until each one's messages are back,
    so they return in the order they were taken. Delivery tags handed out
    are the reader's own (channels number their deliveries separately).
    """

    def __init__(
        self,
        url: str,
        queue: str,
        *,
        prefetch: int = 500,
        connect_timeout_seconds: float = 10.0,
    ) -> None:
        if prefetch < 1:
            msg = f"prefetch must be at least 1, got {prefetch}"
            raise ValueError(msg)
        self._url = url
        self._queue = queue
        self._prefetch = prefetch
        self._timeout = connect_timeout_seconds
        self._connection: Any = None
        #: Consuming channels, oldest first, with consumer tag and unacked broker tags.
        self._channels: list[tuple[Any, str, set[int]]] = []
        #: Our tag -> (channel index, broker tag).
        self._tags: dict[int, tuple[int, int]] = {}
        self._buffer: list[IncomingMessage] = []
        self._seq = 0

    def __enter__(self) -> QueueReader:
        self.open()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    @property
    def outstanding(self) -> int:
        """Messages received and neither acked nor released."""
        return len(self._tags)

    def open(self) -> QueueState:
        """
        Connect and check that the queue exists; nothing is taken yet.

        Raises:
            reliable.errors.BrokerConnectionError: RabbitMQ cannot be reached.
            reliable.errors.BrokerRefused: The queue does not exist (404).
        """
        params = connection_parameters(self._url, connect_timeout_seconds=self._timeout)
        try:
            self._connection = pika.BlockingConnection(params)
        except Exception as exc:
            self.close()
            raise _connection_error(exc, self._url) from None
        return self.state()

    def state(self) -> QueueState:
        """The queue's ready count, read by a passive declare on a side channel."""
        try:
            side = self._connection.channel()
            try:
                frame = side.queue_declare(self._queue, passive=True)
            finally:
                with contextlib.suppress(Exception):
                    if side.is_open:
                        side.close()
        except pika.exceptions.ChannelClosedByBroker as exc:
            what = f"check queue {self._queue!r}"
            raise _refused(what, exc) from None
        except pika.exceptions.AMQPError as exc:
            raise _connection_error(exc, self._url) from None
        return QueueState(
            self._queue, frame.method.message_count, frame.method.consumer_count
        )

    def _add_consumer(self) -> None:
        index = len(self._channels)
        channel = self._connection.channel()
        unacked: set[int] = set()

        def on_message(_ch: Any, method: Any, props: Any, body: bytes) -> None:
            unacked.add(method.delivery_tag)
            tag = self._next_tag()
            self._tags[tag] = (index, method.delivery_tag)
            self._buffer.append(
                IncomingMessage(
                    delivery_tag=tag,
                    redelivered=bool(method.redelivered),
                    exchange=method.exchange,
                    routing_key=method.routing_key,
                    body=bytes(body or b""),
                    properties=Properties.from_pika(props),
                )
            )

        channel.basic_qos(prefetch_count=self._prefetch)
        tag = channel.basic_consume(self._queue, on_message, auto_ack=False)
        self._channels.append((channel, tag, unacked))

    def _next_tag(self) -> int:
        self._seq += 1
        return self._seq

    def _starved(self) -> bool:
        return all(len(unacked) >= self._prefetch for _c, _t, unacked in self._channels)

    def take(
        self, max_count: int, *, idle_seconds: float = 0.25
    ) -> list[IncomingMessage]:
        """
        Return up to *max_count* messages (fewer once none arrives for *idle_seconds*).

        An empty list means the queue had nothing ready for this reader.
        """
        try:
            return self._take(max_count, idle_seconds)
        except pika.exceptions.ChannelClosedByBroker as exc:
            what = f"consume from queue {self._queue!r}"
            raise _refused(what, exc) from None
        except pika.exceptions.AMQPError as exc:
            raise _connection_error(exc, self._url) from None

    def _take(self, max_count: int, idle_seconds: float) -> list[IncomingMessage]:
        last_arrival = time.monotonic()
        seen = len(self._buffer)
        while len(self._buffer) < max_count:
            if self._starved():
                self._add_consumer()  # every slot held: widen the window
            self._connection.process_data_events(time_limit=0.005)
            if len(self._buffer) != seen:
                seen = len(self._buffer)
                last_arrival = time.monotonic()
            elif time.monotonic() - last_arrival >= idle_seconds:
                break
        taken, self._buffer = self._buffer[:max_count], self._buffer[max_count:]
        return taken

    def ack(self, delivery_tags: Sequence[int]) -> None:
        """
        Acknowledge (remove) the given messages; held ones stay unacked.

        Per channel, tags below its lowest held message go in one
        ``multiple`` ack (a blocking ack per message costs a loop turn each);
        the rest one by one.
        """
        by_channel: dict[int, list[int]] = {}
        for tag in delivery_tags:
            found = self._tags.pop(tag, None)
            if found is not None:
                by_channel.setdefault(found[0], []).append(found[1])
        try:
            for index, tags in by_channel.items():
                self._ack_on(index, sorted(tags))
        except pika.exceptions.AMQPError as exc:
            raise _connection_error(exc, self._url) from None

    def _ack_on(self, index: int, tags: list[int]) -> None:
        channel, _tag, unacked = self._channels[index]
        held = unacked.difference(tags)
        lowest_held = min(held) if held else None
        upto = [t for t in tags if lowest_held is None or t < lowest_held]
        if upto:
            channel.basic_ack(upto[-1], multiple=True)
        for tag in tags[len(upto) :]:
            channel.basic_ack(tag)
        unacked.difference_update(tags)

    def poll(self) -> None:
        """Answer heartbeats while the caller is busy elsewhere."""
        with contextlib.suppress(Exception):
            self._connection.process_data_events(time_limit=0)

    def close(self) -> None:
        """Release every held message (channels closed oldest first), then disconnect."""
        connection, self._connection = self._connection, None
        channels, self._channels = self._channels, []
        self._tags.clear()
        self._buffer.clear()
        if connection is None:
            return
        self._connection = connection  # state() below reads through it
        try:
            if len(channels) > 1:
                self._stop_consumers(channels)
            for i, (channel, _tag, unacked) in enumerate(channels):
                before = self._ready() if len(channels) > 1 else None
                with contextlib.suppress(Exception):
                    if channel.is_open:
                        channel.close()
                if before is not None and i < len(channels) - 1:
                    self._await_ready(before + len(unacked))
        finally:
            self._connection = None
            with contextlib.suppress(Exception):
                connection.close()

    def _stop_consumers(self, channels: list[tuple[Any, str, set[int]]]) -> None:
        # With several channels, a message released by one would be delivered
        # straight to a consumer that still has room on another, and come back
        # out of order: stop every consumer before releasing anything. pika
        # requeues deliveries it has not dispatched yet, so dispatch them first.
        with contextlib.suppress(Exception):
            self._connection.process_data_events(time_limit=0)
        for channel, tag, _unacked in channels:
            with contextlib.suppress(Exception):
                channel.basic_cancel(tag)

    def _ready(self) -> int | None:
        try:
            return self.state().message_count
        except errors.BrokerError:
            return None

    def _await_ready(self, count: int, timeout_seconds: float = 5.0) -> None:
        # A quorum queue applies the returns of different channels in the
        # order its log receives them, not the order the channels closed:
        # wait until one channel's messages are back before closing the next.
        deadline = time.monotonic() + timeout_seconds
        while time.monotonic() < deadline:
            ready = self._ready()
            if ready is None or ready >= count:
                return
            time.sleep(0.005)


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
        raise _connection_error(exc, url) from None
    try:
        yield Channel(connection, url)
    finally:
        with contextlib.suppress(Exception):
            connection.close()


def _refused(what: str, exc: Any) -> errors.BrokerRefused:
    return errors.BrokerRefused(
        f"{what}: broker refused with {exc.reply_code} {exc.reply_text}",
        reply_code=exc.reply_code,
        reply_text=exc.reply_text,
    )


def _connection_error(exc: BaseException, url: str) -> errors.BrokerError:
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
