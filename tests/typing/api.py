"""Checked by mypy only, never run: the public API as users write it."""

from __future__ import annotations

import reliable
from reliable import Settings

settings: Settings = Settings.from_env({"RELIABLE_AMQP_URL": "amqp://h/%2F"})
error: reliable.ReliableError = reliable.BrokerConnectionError()

# The relay (issue 3).
rel = reliable.Reliable(database_url="postgresql:///x", amqp_url="amqp://h/%2F")
relay: reliable.OutboxRelay = rel.relay(
    config=reliable.RelayConfig(batch_size=100),
    retry_policy=reliable.RetryPolicy(max_attempts=3),
)
stats = relay.run_once()
published: int = stats.published
