"""
reliable: delivery guarantees for Celery on RabbitMQ.

Topology as code, a transactional outbox with a confirming relay,
effectively-once tasks with a PostgreSQL inbox, and dead-letter tooling.
"""

from __future__ import annotations

import importlib.metadata

from reliable.app import Reliable
from reliable.config import Settings
from reliable.errors import (
    BrokerConnectionError,
    BrokerError,
    BrokerRefused,
    ConfigError,
    DatabaseError,
    DecodeError,
    ManagementAPIError,
    PublishNotConfirmed,
    ReliableError,
    ReplayError,
    SchemaNotInstalled,
    TopologyConflict,
    TopologyError,
    TopologyFileError,
    UnroutableMessage,
)
from reliable.outbox import Outbox, OutboxMessage

__version__ = importlib.metadata.version("reliable")

__all__ = [
    # Entry point
    "Reliable",
    "Settings",
    # Messages, outbox and inbox
    "Outbox",
    "OutboxMessage",
    # Errors
    "ReliableError",
    "ConfigError",
    "TopologyError",
    "TopologyFileError",
    "TopologyConflict",
    "BrokerError",
    "BrokerConnectionError",
    "BrokerRefused",
    "PublishNotConfirmed",
    "UnroutableMessage",
    "ManagementAPIError",
    "DatabaseError",
    "SchemaNotInstalled",
    "DecodeError",
    "ReplayError",
]
