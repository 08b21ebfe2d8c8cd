"""
The AMQP boundary: the only package that imports pika.

* `open_channel()` gives a blocking `Channel` for declares, passive checks,
  ``basic.get``/ack and consuming (topology apply, DLQ tooling);
* `QueueReader` reads a queue while keeping its order (DLQ show and replay);
* `ConfirmingPublisher` drives a pika ``SelectConnection`` with pipelined
  publisher confirms and ``mandatory`` (outbox relay, DLQ replay).

Every pika exception is translated into `reliable.errors` here; callers use
`reliable.amqp.X` and never import pika.
"""

from __future__ import annotations

from reliable.amqp.channel import Channel, open_channel
from reliable.amqp.connection import connection_parameters, vhost_url
from reliable.amqp.messages import (
    BASIC_PROPERTY_NAMES,
    IncomingMessage,
    Outcome,
    OutgoingMessage,
    Properties,
    PublishResult,
    QueueState,
    Status,
    long_int,
)
from reliable.amqp.publisher import ConfirmingPublisher
from reliable.amqp.reader import QueueReader

__all__ = [
    # Connections
    "open_channel",
    "connection_parameters",
    "vhost_url",
    # Blocking channel and reader
    "Channel",
    "QueueState",
    "QueueReader",
    # Publishing
    "ConfirmingPublisher",
    "PublishResult",
    "Outcome",
    "Status",
    # Messages
    "Properties",
    "BASIC_PROPERTY_NAMES",
    "OutgoingMessage",
    "IncomingMessage",
    "long_int",
]
