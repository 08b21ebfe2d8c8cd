"""Checked by mypy only, never run: the public API as users write it."""

from __future__ import annotations

import reliable
from reliable import Settings

settings: Settings = Settings.from_env({"RELIABLE_AMQP_URL": "amqp://h/%2F"})
error: reliable.ReliableError = reliable.BrokerConnectionError()
