"""
Units and RabbitMQ's argument tables for topology files (no pydantic here).

Durations are written ``500ms``, ``30s``, ``10m``, ``2h``, ``7d`` or integer
milliseconds; sizes ``1GB`` (10^9), ``512MiB`` (2^29) or integer bytes. Both are
converted to the integers RabbitMQ expects only when arguments are rendered.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from datetime import timedelta

# -- durations and sizes ----------------------------------------------------------

_DURATION = re.compile(r"^\s*(\d+)\s*(ms|s|m|h|d)\s*$")
_DURATION_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
DURATION_PATTERN = r"^\s*\d+\s*(ms|s|m|h|d)\s*$"
_SIZE = re.compile(r"^\s*(\d+)\s*(B|kB|KB|MB|GB|TB|KiB|MiB|GiB|TiB)?\s*$")
_SIZE_BYTES = {
    None: 1,
    "B": 1,
    "kB": 1000,
    "KB": 1000,
    "MB": 1000**2,
    "GB": 1000**3,
    "TB": 1000**4,
    "KiB": 1024,
    "MiB": 1024**2,
    "GiB": 1024**3,
    "TiB": 1024**4,
}
SIZE_PATTERN = r"^\s*\d+\s*(B|kB|KB|MB|GB|TB|KiB|MiB|GiB|TiB)?\s*$"
#: RabbitMQ stores these as signed 32/64-bit integers; larger values are refused.
MAX_MS = 2**32 - 1


def parse_duration(value: object) -> timedelta:
    """
    Read ``"500ms"``, ``"30s"``, ``"10m"``, ``"2h"``, ``"7d"`` or integer milliseconds.

    >>> parse_duration("10m")
    datetime.timedelta(seconds=600)
    """
    if isinstance(value, timedelta):
        ms = value // timedelta(milliseconds=1)
    elif isinstance(value, bool):
        msg = f"expected a duration such as '30s' or milliseconds, got {value!r}"
        raise ValueError(msg)
    elif isinstance(value, int):
        ms = value
    elif isinstance(value, str) and (match := _DURATION.match(value)):
        ms = int(match[1]) * _DURATION_MS[match[2]]
    else:
        msg = f"invalid duration {value!r}; write 500ms, 30s, 10m, 2h, 7d or integer milliseconds"
        raise ValueError(msg)
    if ms < 0 or ms > MAX_MS:
        msg = f"duration {value!r} is out of range; use 0 to {MAX_MS} milliseconds"
        raise ValueError(msg)
    return timedelta(milliseconds=ms)


def milliseconds(value: timedelta) -> int:
    return value // timedelta(milliseconds=1)


def format_duration(value: timedelta) -> str:
    """The shortest exact spelling: ``600000`` ms -> ``"10m"``."""
    ms = milliseconds(value)
    for unit in ("d", "h", "m", "s"):
        if ms and ms % _DURATION_MS[unit] == 0:
            return f"{ms // _DURATION_MS[unit]}{unit}"
    return f"{ms}ms"


def parse_size(value: object) -> int:
    """Read ``"1GB"`` (10^9), ``"512MiB"`` (2^29) or integer bytes."""
    if isinstance(value, bool):
        msg = f"expected a size such as '512MiB' or bytes, got {value!r}"
        raise ValueError(msg)
    if isinstance(value, int):
        size = value
    elif isinstance(value, str) and (match := _SIZE.match(value)):
        size = int(match[1]) * _SIZE_BYTES[match[2]]
    else:
        msg = f"invalid size {value!r}; write 1GB, 512MiB or integer bytes"
        raise ValueError(msg)
    if size <= 0 or size >= 2**63:
        msg = (
            f"size {value!r} must be positive; a zero or negative limit makes no sense"
        )
        raise ValueError(msg)
    return size


def format_size(size: int) -> str | int:
    for unit in ("TiB", "GiB", "MiB", "KiB", "TB", "GB", "MB", "kB"):
        if size % _SIZE_BYTES[unit] == 0:
            return f"{size // _SIZE_BYTES[unit]}{unit}"
    return size


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, sorted(choices), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


# -- known arguments ----------------------------------------------------------------

#: The typed field that renders each argument (``arguments:`` may not repeat them).
TYPED_QUEUE_ARGUMENTS = {
    "x-queue-type": "type",
    "x-dead-letter-exchange": "dead_letter.exchange",
    "x-dead-letter-routing-key": "dead_letter.routing_key",
    "x-dead-letter-strategy": "dead_letter.strategy",
    "x-overflow": "overflow",
    "x-delivery-limit": "delivery_limit",
    "x-message-ttl": "message_ttl",
    "x-expires": "expires",
    "x-max-length": "max_length",
    "x-max-length-bytes": "max_length_bytes",
    "x-max-priority": "max_priority",
    "x-single-active-consumer": "single_active_consumer",
    "x-max-age": "max_age",
}
_COMMON = {"x-queue-type", "x-queue-leader-locator"}
#: Which ``x-`` arguments each queue type takes (RabbitMQ 3.10-4.3 capabilities).
QUEUE_ARGUMENTS: dict[str, frozenset[str]] = {
    "classic": frozenset(
        {
            "x-queue-type",
            "x-expires",
            "x-message-ttl",
            "x-dead-letter-exchange",
            "x-dead-letter-routing-key",
            "x-max-length",
            "x-max-length-bytes",
            "x-max-priority",
            "x-overflow",
            "x-queue-mode",
            "x-queue-version",
            "x-single-active-consumer",
            "x-queue-master-locator",
        }
    ),
    "quorum": frozenset(
        _COMMON
        | {
            "x-expires",
            "x-message-ttl",
            "x-dead-letter-exchange",
            "x-dead-letter-routing-key",
            "x-dead-letter-strategy",
            "x-max-length",
            "x-max-length-bytes",
            "x-overflow",
            "x-single-active-consumer",
            "x-delivery-limit",
            "x-quorum-initial-group-size",
            "x-quorum-target-group-size",
            "x-max-in-memory-length",
            "x-max-in-memory-bytes",
            "x-consumer-disconnected-timeout",
            "x-delayed-retry-type",
            "x-delayed-retry-min",
            "x-delayed-retry-max",
        }
    ),
    "stream": frozenset(
        _COMMON
        | {
            "x-max-length-bytes",
            "x-max-age",
            "x-stream-max-segment-size-bytes",
            "x-initial-cluster-size",
            "x-stream-filter-size-bytes",
        }
    ),
}
ALL_QUEUE_ARGUMENTS = frozenset().union(*QUEUE_ARGUMENTS.values())
EXCHANGE_TYPES = ("direct", "topic", "fanout", "headers")
#: Exchange arguments (RabbitMQ core and the delayed-message plugin).
EXCHANGE_ARGUMENTS = frozenset({"alternate-exchange", "x-delayed-type"})
#: Policy keys RabbitMQ knows; a close miss is reported as a typo.
POLICY_KEYS = frozenset(
    {
        "message-ttl",
        "expires",
        "max-length",
        "max-length-bytes",
        "overflow",
        "dead-letter-exchange",
        "dead-letter-routing-key",
        "dead-letter-strategy",
        "delivery-limit",
        "queue-mode",
        "queue-version",
        "queue-master-locator",
        "queue-leader-locator",
        "max-age",
        "stream-max-segment-size-bytes",
        "max-in-memory-length",
        "max-in-memory-bytes",
        "alternate-exchange",
        "federation-upstream",
        "federation-upstream-set",
        "ha-mode",
        "ha-params",
        "ha-sync-mode",
        "ha-promote-on-shutdown",
        "ha-promote-on-failure",
        "initial-cluster-size",
        "target-group-size",
    }
)
POLICY_MS = frozenset({"message-ttl", "expires"})
POLICY_BYTES = frozenset({"max-length-bytes"})
