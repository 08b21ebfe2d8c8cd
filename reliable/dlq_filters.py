"""
What a dead letter is (`DeadLetter`) and which ones an operation selects (`Filter`).

Pure code: no I/O. Exception types come from the failure records of the
effectively-once tasks and are attached by `reliable.dlq` when a database is
configured; without one, an ``--exception`` filter matches nothing.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from reliable import amqp
from reliable.dlq_headers import (
    REASONS,
    Origin,
    origin_of,
    plain,
    replay_count,
    text,
)


def parse_header_filter(value: str) -> tuple[str, str]:
    """``"K=V"`` → ``("K", "V")``."""
    key, sep, val = value.partition("=")
    if not sep or not key:
        msg = f"invalid header filter {value!r}; write KEY=VALUE"
        raise ValueError(msg)
    return key, val


@dataclass(slots=True)
class DeadLetter:
    """A message taken from a dead-letter queue, with what its headers tell."""

    message: amqp.IncomingMessage
    origin: Origin
    replay_count: int
    #: Failure record's exception type, when records exist for the task id.
    exception_type: str | None = None
    exception_message: str | None = None

    @classmethod
    def from_message(
        cls, message: amqp.IncomingMessage, *, dead_letter_queue: str = ""
    ) -> DeadLetter:
        headers = message.properties.headers
        return cls(
            message=message,
            origin=origin_of(headers, dead_letter_queue=dead_letter_queue),
            replay_count=replay_count(headers),
        )

    @property
    def headers(self) -> Mapping[str, Any]:
        return self.message.properties.headers or {}

    @property
    def task_name(self) -> str | None:
        """Celery's ``headers['task']`` (protocol v2), if this is a Celery message."""
        return text(self.headers.get("task"))

    @property
    def task_id(self) -> str | None:
        """Celery task id: ``headers['id']``, else ``correlation_id``."""
        return text(self.headers.get("id")) or self.message.properties.correlation_id

    @property
    def ids(self) -> set[str]:
        """Every id this message answers to (message_id, correlation_id, task id)."""
        found = {
            self.message.properties.message_id,
            self.message.properties.correlation_id,
            text(self.headers.get("id")),
        }
        return {i for i in found if i}

    @property
    def died_at(self) -> datetime | None:
        """Newest death time, else the publish timestamp property."""
        if self.origin.last_death is not None:
            return self.origin.last_death
        ts = self.message.properties.timestamp
        return datetime.fromtimestamp(ts, UTC) if ts else None

    def age_seconds(self, now: datetime) -> float | None:
        died = self.died_at
        return (now - died).total_seconds() if died else None

    def summary(self, now: datetime) -> dict[str, Any]:
        """One row for listings (JSON-friendly)."""
        props = self.message.properties
        return {
            "message_id": props.message_id,
            "correlation_id": props.correlation_id,
            "task": self.task_name,
            "task_id": self.task_id,
            "source_queue": self.origin.queue,
            "origin_from": self.origin.source,
            "reason": self.origin.reason,
            "exchange": self.origin.exchange,
            "routing_keys": list(self.origin.routing_keys),
            "death_count": self.origin.death_count,
            "first_death": _iso(self.origin.first_death),
            "last_death": _iso(self.origin.last_death),
            "age_seconds": _round(self.age_seconds(now)),
            "replay_count": self.replay_count,
            "exception_type": self.exception_type,
            "size": len(self.message.body),
        }

    def detail(self, now: datetime, *, max_body: int | None = None) -> dict[str, Any]:
        """Everything `dlq show` prints, JSON-friendly; the body cut at *max_body* bytes if given."""
        props = self.message.properties
        data = self.summary(now)
        data["exception_message"] = self.exception_message
        data["deaths"] = [d.to_dict() for d in self.origin.deaths]
        data["properties"] = {
            k: getattr(props, k)
            for k in amqp.BASIC_PROPERTY_NAMES
            if getattr(props, k) is not None
        }
        data["headers"] = plain(dict(self.headers))
        body = self.message.body
        if max_body is not None and len(body) > max_body:
            data["body_truncated_at"] = max_body
            body = body[:max_body]
        data["body"] = render_body(body, props.content_type)
        celery = celery_call(self.message.body) if self.task_name else None
        if celery is not None:
            data["celery"] = {"task": self.task_name, **celery}
        return data


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _round(value: float | None) -> float | None:
    return round(value, 3) if value is not None else None


def render_body(body: bytes, content_type: str | None) -> dict[str, Any]:
    """JSON pretty-printable if it parses, else text if UTF-8, else base64."""
    try:
        decoded = body.decode("utf-8")
    except UnicodeDecodeError:
        import base64

        return {"kind": "base64", "value": base64.b64encode(body).decode("ascii")}
    try:
        return {"kind": "json", "value": json.loads(decoded)}
    except ValueError:
        return {"kind": "text", "value": decoded}


def celery_call(body: bytes) -> dict[str, Any] | None:
    """Arguments of a Celery protocol-v2 JSON body ``[args, kwargs, embed]``."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    if isinstance(data, list) and len(data) == 3 and isinstance(data[1], dict):
        return {"args": data[0], "kwargs": data[1]}
    return None


@dataclass(frozen=True, slots=True, kw_only=True)
class Filter:
    """
    Which dead letters an operation acts on; every given criterion must hold.

    Within one criterion any listed value matches (``reasons=("expired",
    "maxlen")``). An empty filter matches everything.
    """

    source_queues: tuple[str, ...] = ()
    reasons: tuple[str, ...] = ()
    older_than_seconds: float | None = None
    newer_than_seconds: float | None = None
    headers: tuple[tuple[str, str], ...] = ()
    tasks: tuple[str, ...] = ()
    exceptions: tuple[str, ...] = ()
    message_ids: tuple[str, ...] = ()
    #: Act on at most this many matching messages.
    limit: int | None = None

    def __post_init__(self) -> None:
        bad = [r for r in self.reasons if r not in REASONS]
        if bad:
            msg = f"unknown reason {bad[0]!r}; use one of {', '.join(REASONS)}"
            raise ValueError(msg)
        if self.limit is not None and self.limit < 1:
            msg = f"limit must be at least 1, got {self.limit}"
            raise ValueError(msg)

    @property
    def selects_all(self) -> bool:
        """True when no criterion (other than the limit) is set."""
        return not any(
            (
                self.source_queues,
                self.reasons,
                self.older_than_seconds is not None,
                self.newer_than_seconds is not None,
                self.headers,
                self.tasks,
                self.exceptions,
                self.message_ids,
            )
        )

    def matches(self, letter: DeadLetter, now: datetime) -> bool:
        checks = (
            not self.source_queues or letter.origin.queue in self.source_queues,
            not self.reasons or letter.origin.reason in self.reasons,
            not self.tasks or letter.task_name in self.tasks,
            not self.exceptions
            or exception_matches(letter.exception_type, self.exceptions),
            not self.message_ids or bool(letter.ids & set(self.message_ids)),
            all(_header_equals(letter.headers, k, v) for k, v in self.headers),
            self._age_ok(letter, now),
        )
        return all(checks)

    def _age_ok(self, letter: DeadLetter, now: datetime) -> bool:
        if self.older_than_seconds is None and self.newer_than_seconds is None:
            return True
        age = letter.age_seconds(now)
        if age is None:
            return False  # no time to compare: an age filter cannot select it
        if self.older_than_seconds is not None and age < self.older_than_seconds:
            return False
        return self.newer_than_seconds is None or age <= self.newer_than_seconds

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "source_queue": list(self.source_queues),
            "reason": list(self.reasons),
            "older_than_seconds": self.older_than_seconds,
            "newer_than_seconds": self.newer_than_seconds,
            "header": [f"{k}={v}" for k, v in self.headers],
            "task": list(self.tasks),
            "exception": list(self.exceptions),
            "message_id": list(self.message_ids),
            "limit": self.limit,
        }
        return {k: v for k, v in data.items() if v not in (None, [])}


def exception_matches(recorded: str | None, wanted: Sequence[str]) -> bool:
    """
    Whether the recorded exception type is one of *wanted*.

    Failure records keep the qualified name (``shop.PaymentDeclined``) while
    people type the class name, so a wanted name without a dot also matches
    the last component of a qualified one.
    """
    if not recorded:
        return False
    short = recorded.rsplit(".", 1)[-1]
    return any(w == recorded or ("." not in w and w == short) for w in wanted)


def _header_equals(headers: Mapping[str, Any], key: str, expected: str) -> bool:
    if key not in headers:
        return False
    value = headers[key]
    if isinstance(value, bool):
        return expected.lower() == str(value).lower()
    shown = text(value)
    return (shown if shown is not None else str(plain(value))) == expected


def group_counts(letters: Sequence[DeadLetter], key: str) -> list[dict[str, Any]]:
    """Counts of *letters* by ``source_queue``, ``reason`` or ``exception_type``."""
    counts: dict[str | None, int] = {}
    for letter in letters:
        value = {
            "source_queue": letter.origin.queue,
            "reason": letter.origin.reason,
            "exception_type": letter.exception_type,
        }[key]
        counts[value] = counts.get(value, 0) + 1
    return [
        {key: k, "count": n}
        for k, n in sorted(counts.items(), key=lambda kv: (-kv[1], str(kv[0])))
    ]


@dataclass(slots=True)
class Tally:
    """Counts by outcome, with a few examples of what went wrong."""

    counts: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def add(self, outcome: str, n: int = 1, problem: str | None = None) -> None:
        if n:
            self.counts[outcome] = self.counts.get(outcome, 0) + n
        if problem and len(self.problems) < 20:
            self.problems.append(problem)


def summarize(
    letters: Iterable[DeadLetter], now: datetime | None = None
) -> dict[str, Any]:
    """Counts by source queue, reason and exception type, and the oldest age."""
    items = list(letters)
    now = now or datetime.now(UTC)
    ages = [a for a in (x.age_seconds(now) for x in items) if a is not None]
    return {
        "sampled": len(items),
        "oldest_age_seconds": round(max(ages), 3) if ages else None,
        "by_source_queue": group_counts(items, "source_queue"),
        "by_reason": group_counts(items, "reason"),
        "by_exception_type": [
            g for g in group_counts(items, "exception_type") if g["exception_type"]
        ],
    }
