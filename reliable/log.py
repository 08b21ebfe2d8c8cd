"""
Logging helpers: stdlib loggers, and a JSON formatter for long-running commands.

Log calls carry a stable ``action`` in ``extra`` plus ids and counts, never
payloads. `JsonFormatter` writes one JSON object per line with those extras.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

from reliable.redact import redact_text

_STANDARD_ATTRS = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", (), None)).keys() | {"message", "asctime"}
)


def get_logger(name: str) -> logging.Logger:
    """Return the stdlib logger *name* (kept as a function so call sites read the same)."""
    return logging.getLogger(name)


class JsonFormatter(logging.Formatter):
    """Format records as one JSON object per line, extras included, secrets redacted."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact_text(record.getMessage()),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                payload[key] = value
        if record.exc_info:
            payload["exception"] = redact_text(self.formatException(record.exc_info))
        return json.dumps(payload, default=str)


def configure_json_logging(level: str = "INFO") -> None:
    """Send the ``reliable`` loggers to stderr as JSON lines (used by long-running commands)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger("reliable")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
