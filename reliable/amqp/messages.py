"""
Message value objects shared by the publisher, the channel and the reader.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any, Literal

import pika
import pika.compat
import pika.exceptions
import pika.spec

logger = logging.getLogger(__name__)


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


#: The basic properties other than ``headers``, in AMQP order.
BASIC_PROPERTY_NAMES: tuple[str, ...] = tuple(
    f.name for f in fields(Properties) if f.name != "headers"
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


@dataclass(frozen=True, slots=True)
class QueueState:
    """What a passive ``queue.declare`` tells: read from the queue itself, not from statistics."""

    name: str
    message_count: int
    consumer_count: int
