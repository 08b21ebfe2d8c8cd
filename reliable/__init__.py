"""
reliable: delivery guarantees for Celery on RabbitMQ.

Topology as code, a transactional outbox with a confirming relay,
effectively-once tasks with a PostgreSQL inbox, and dead-letter tooling.
"""

from __future__ import annotations

import importlib.metadata

from reliable.app import Reliable
from reliable.config import Settings
from reliable.declare import Plan, plan
from reliable.declare_apply import apply
from reliable.dlq import DeadLetters, ReplayFilter, ReplayReport, replay
from reliable.errors import (
    ApplyIncomplete,
    BrokerConnectionError,
    BrokerError,
    BrokerRefused,
    ConfigError,
    DatabaseError,
    DecodeError,
    ExchangeNotFound,
    ManagementAPIError,
    PublishNotConfirmed,
    QueueNotFound,
    ReliableError,
    ReplayError,
    SchemaNotInstalled,
    TopologyConflict,
    TopologyError,
    TopologyFileError,
    UnroutableMessage,
)
from reliable.inbox import Inbox
from reliable.outbox import Outbox, OutboxMessage
from reliable.relay import OutboxRelay, RelayConfig
from reliable.retry import RetryPolicy
from reliable.topology import Binding, DeadLetter, Exchange, Policy, Queue, Topology
from reliable.topology_file import dump_topology, load_topology

__version__ = importlib.metadata.version("reliable")

__all__ = [
    # Entry point
    "Reliable",
    "Settings",
    # Topology
    "Binding",
    "DeadLetter",
    "Exchange",
    "Policy",
    "Queue",
    "Topology",
    "load_topology",
    "dump_topology",
    "plan",
    "apply",
    "Plan",
    # Messages, outbox and inbox
    "Outbox",
    "OutboxMessage",
    "OutboxRelay",
    "RelayConfig",
    "RetryPolicy",
    "Inbox",
    # Dead letters
    "DeadLetters",
    "replay",
    "ReplayFilter",
    "ReplayReport",
    # Errors
    "ReliableError",
    "ConfigError",
    "TopologyError",
    "TopologyFileError",
    "TopologyConflict",
    "ApplyIncomplete",
    "BrokerError",
    "BrokerConnectionError",
    "BrokerRefused",
    "QueueNotFound",
    "ExchangeNotFound",
    "PublishNotConfirmed",
    "UnroutableMessage",
    "ManagementAPIError",
    "DatabaseError",
    "SchemaNotInstalled",
    "DecodeError",
    "ReplayError",
]
