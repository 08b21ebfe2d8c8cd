"""
Reading and rewriting dead-letter headers, and the typed JSON form of AMQP values.

``x-death`` differs by broker version (rabbitmq-celery-facts §2): newest entry
first everywhere, ``x-last-death-*`` only from 3.13, and client-sent ``x-death``
continues the broker's counts on ≤3.12 and 3.13.3+ but not on 3.13.0 to 3.13.2 or
4.x. So a replay moves the broker's death headers into our own history header
and counts replays in our own ``x-reliable-replay-count``: the numbers then mean
the same on every version. Everything here is pure and never raises on odd
header values: a dead letter with a truncated or strangely typed ``x-death`` is
still shown and moved intact.
"""

from __future__ import annotations

import base64
import decimal
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from reliable import amqp

#: How many replays a message has been through (our counter; the broker's
#: ``x-death`` count is not portable across versions).
REPLAY_COUNT = "x-reliable-replay-count"
#: The queue the message was first replayed to (used when ``x-death`` is gone).
ORIGIN_QUEUE = "x-reliable-origin-queue"
#: Earlier ``x-death``/``x-first-death-*``/``x-last-death-*`` values, newest first.
HISTORY = "x-reliable-death-history"
#: Why a message was sent to the parking lot.
PARKED_REASON = "x-reliable-parked-reason"
#: At most this many history entries are kept, so headers cannot grow without bound.
HISTORY_LIMIT = 10

#: Headers the broker owns: moved into `HISTORY` or dropped on replay. A copied
#: ``x-delivery-count`` would make the new copy look failed already.
_DEATH_PREFIXES = ("x-first-death-", "x-last-death-")
_DROPPED = ("x-delivery-count", "x-acquired-count")
#: Celery's native delayed delivery queues (facts §3.4): a TTL hop, not an origin.
CELERY_DELAYED_PREFIX = "celery_delayed_"

REASONS = ("rejected", "expired", "maxlen", "delivery_limit")


def text(value: object) -> str | None:
    """A header value as text: str as is, bytes decoded leniently, else ``None``."""
    if isinstance(value, str):
        return value
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", errors="replace")
    return None


def as_int(value: object) -> int | None:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, decimal.Decimal) and value == value.to_integral_value():
        return int(value)
    raw = text(value)
    if raw is not None and raw.strip().lstrip("-").isdigit():
        return int(raw.strip())
    return None


def as_time(value: object) -> datetime | None:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    number = as_int(value)
    if number is not None and number > 0:
        try:
            return datetime.fromtimestamp(number, UTC)
        except (OverflowError, OSError, ValueError):
            return None
    return None


@dataclass(frozen=True, slots=True)
class Death:
    """One ``x-death`` entry; fields the broker left out (or mistyped) are ``None``."""

    queue: str | None
    reason: str | None
    count: int | None
    time: datetime | None
    exchange: str | None
    routing_keys: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "queue": self.queue,
            "reason": self.reason,
            "count": self.count,
            "time": self.time.isoformat() if self.time else None,
            "exchange": self.exchange,
            "routing_keys": list(self.routing_keys),
        }


def parse_deaths(headers: Mapping[str, Any] | None) -> list[Death]:
    """The ``x-death`` entries, newest first; malformed entries are skipped, never raised."""
    raw = (headers or {}).get("x-death")
    if not isinstance(raw, list):
        return []
    deaths = []
    for entry in raw:
        if not isinstance(entry, Mapping):
            continue
        keys = entry.get("routing-keys")
        routing = (
            tuple(k for k in (text(v) for v in keys) if k is not None)
            if isinstance(keys, list)
            else ()
        )
        deaths.append(
            Death(
                queue=text(entry.get("queue")),
                reason=text(entry.get("reason")),
                count=as_int(entry.get("count")),
                time=as_time(entry.get("time")),
                exchange=text(entry.get("exchange")),
                routing_keys=routing,
            )
        )
    return deaths


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a dead letter came from, as far as its headers tell."""

    queue: str | None
    reason: str | None
    exchange: str | None
    routing_keys: tuple[str, ...]
    death_count: int
    first_death: datetime | None
    last_death: datetime | None
    #: ``x-death``, ``x-reliable-origin-queue`` or ``None`` (unknown origin).
    source: str | None
    deaths: list[Death] = field(default_factory=list)


def origin_of(
    headers: Mapping[str, Any] | None, *, dead_letter_queue: str = ""
) -> Origin:
    """
    Find the queue a dead letter should go back to.

    The newest ``x-death`` entry names the queue it died in. Entries for
    Celery's ``celery_delayed_*`` queues are skipped (a delay hop expiring is not
    where the task failed; replaying into one would run the delay again), and so
    are entries for *dead_letter_queue* itself (a DLQ with its own TTL or limit).
    Without a usable entry the ``x-reliable-origin-queue`` a previous replay
    wrote is used; without both the origin is unknown.
    """
    hdrs = headers or {}
    deaths = parse_deaths(hdrs)
    chosen = next(
        (
            d
            for d in deaths
            if d.queue
            and not d.queue.startswith(CELERY_DELAYED_PREFIX)
            and d.queue != dead_letter_queue
        ),
        None,
    )
    times = [d.time for d in deaths if d.time is not None]
    count = sum(d.count or 0 for d in deaths)
    recorded = text(hdrs.get(ORIGIN_QUEUE))
    if chosen is not None:
        return Origin(
            queue=chosen.queue,
            reason=chosen.reason,
            exchange=chosen.exchange,
            routing_keys=chosen.routing_keys,
            death_count=count,
            first_death=min(times) if times else None,
            last_death=max(times) if times else None,
            source="x-death",
            deaths=deaths,
        )
    first = deaths[0] if deaths else None
    return Origin(
        queue=recorded or None,
        reason=first.reason if first else text(hdrs.get("x-first-death-reason")),
        exchange=first.exchange if first else None,
        routing_keys=first.routing_keys if first else (),
        death_count=count,
        first_death=min(times) if times else None,
        last_death=max(times) if times else None,
        source="x-reliable-origin-queue" if recorded else None,
        deaths=deaths,
    )


def replay_count(headers: Mapping[str, Any] | None) -> int:
    return as_int((headers or {}).get(REPLAY_COUNT)) or 0


def is_death_header(key: str) -> bool:
    return key == "x-death" or key.startswith(_DEATH_PREFIXES)


def replay_headers(
    headers: Mapping[str, Any] | None,
    *,
    origin_queue: str | None,
    replayed_at: datetime,
    increment: bool = True,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """
    The headers of the republished copy.

    Broker death headers move into `HISTORY` (one entry per replay, newest
    first, at most `HISTORY_LIMIT`), ``x-delivery-count``/``x-acquired-count``
    are dropped, the replay counter goes up and the origin is recorded once.
    Every other header is kept with its value and type.
    """
    kept: dict[str, Any] = {}
    moved: dict[str, Any] = {}
    for key, value in (headers or {}).items():
        if is_death_header(key):
            moved[key] = value
        elif key not in _DROPPED:
            kept[key] = value
    history = kept.get(HISTORY)
    history = list(history) if isinstance(history, list) else []
    if moved:
        moved["replayed-at"] = replayed_at.replace(microsecond=0)
        history.insert(0, moved)
    if history:
        kept[HISTORY] = history[:HISTORY_LIMIT]
    if increment:
        kept[REPLAY_COUNT] = replay_count(headers) + 1
    if origin_queue and not text(kept.get(ORIGIN_QUEUE)):
        kept[ORIGIN_QUEUE] = origin_queue
    kept.update(extra or {})
    return kept


# -- typed JSON for AMQP values (export/import) -----------------------------------
#
# pika decodes field tables into Python values (timestamps into datetime, a
# longstr into str when it is UTF-8 and bytes otherwise, decimals into Decimal)
# and encodes them back by Python type. Each value is written as {"t": type,
# "v": value} so an import gives pika the same Python types, hence the same
# AMQP types, as the dead letter had when it was read.


def encode_value(value: Any) -> dict[str, Any]:
    if value is None:
        return {"t": "void"}
    if isinstance(value, bool):
        return {"t": "bool", "v": value}
    if isinstance(value, int):
        # pika decodes 64-bit fields into its int subclass ``long`` and
        # encodes that subclass as 64-bit again: keep the distinction.
        return {"t": "int" if type(value) is int else "long", "v": int(value)}
    if isinstance(value, float):
        return {"t": "float", "v": value}
    if isinstance(value, decimal.Decimal):
        return {"t": "decimal", "v": str(value)}
    if isinstance(value, datetime):
        aware = value if value.tzinfo else value.replace(tzinfo=UTC)
        return {"t": "timestamp", "v": int(aware.timestamp())}
    if isinstance(value, str):
        return {"t": "str", "v": value}
    if isinstance(value, bytes | bytearray):
        return {"t": "bytes", "v": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, Mapping):
        return {"t": "table", "v": {str(k): encode_value(v) for k, v in value.items()}}
    if isinstance(value, list | tuple):
        return {"t": "array", "v": [encode_value(v) for v in value]}
    return {"t": "str", "v": str(value)}


def decode_value(data: Any) -> Any:
    """
    Inverse of `encode_value`.

    Raises:
        ValueError: *data* is not a typed value.
    """
    if not isinstance(data, Mapping) or "t" not in data:
        msg = f"not a typed value: {data!r}"
        raise ValueError(msg)
    kind, value = data["t"], data.get("v")
    decoders: dict[str, Any] = {
        "void": lambda _v: None,
        "bool": bool,
        "int": int,
        "long": lambda v: amqp.long_int(int(v)),
        "float": float,
        "decimal": decimal.Decimal,
        "timestamp": lambda v: datetime.fromtimestamp(int(v), UTC),
        "str": str,
        "bytes": lambda v: base64.b64decode(v, validate=True),
        "table": lambda v: {str(k): decode_value(x) for k, x in v.items()},
        "array": lambda v: [decode_value(x) for x in v],
    }
    if kind not in decoders:
        msg = f"unknown value type {kind!r}"
        raise ValueError(msg)
    try:
        return decoders[kind](value)
    except (TypeError, AttributeError, decimal.InvalidOperation) as exc:
        msg = f"bad {kind} value {value!r}"
        raise ValueError(msg) from exc


def plain(value: Any) -> Any:
    """A JSON-friendly rendering for display (not lossless: see `encode_value`)."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bytes | bytearray):
        raw = bytes(value)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return "base64:" + base64.b64encode(raw).decode("ascii")
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value
