"""
The republishing half of `reliable.dlq`: targets, run reports, the rate limiter
and `ReplayRun`, which decides per dead letter where its copy goes and
publishes a batch with confirms.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Literal

from reliable import amqp
from reliable.dlq_filters import DeadLetter, Tally
from reliable.dlq_headers import PARKED_REASON, replay_headers

Command = Literal["replay", "move", "purge", "export", "import", "show"]
#: Outcomes that leave work undone (the CLI exits 8 when any is non-zero).
INCOMPLETE = (
    "returned",
    "nacked",
    "refused",
    "unconfirmed",
    "unknown_origin",
    "origin_missing",
)
_DONE = {"replay": "replayed", "park": "parked", "move": "moved"}
#: Headers that describe the copy in one queue; copied along they mislead.
_PER_QUEUE = ("x-delivery-count", "x-acquired-count")

Result = tuple[DeadLetter, str, bool]


@dataclass(frozen=True, slots=True, kw_only=True)
class Target:
    """Where copies go: a queue (through the default exchange) or an exchange + key."""

    queue: str | None = None
    exchange: str | None = None
    routing_key: str = ""

    def __post_init__(self) -> None:
        if self.queue is not None and self.exchange is not None:
            msg = "give a target queue or a target exchange, not both"
            raise ValueError(msg)

    @property
    def is_origin(self) -> bool:
        return self.queue is None and self.exchange is None

    def describe(self) -> str:
        if self.exchange is not None:
            return f"exchange {self.exchange!r} key {self.routing_key!r}"
        return f"queue {self.queue!r}" if self.queue else "origin"


@dataclass(slots=True)
class RunReport:
    """What a run did (or, with ``dry_run``, would do)."""

    command: str
    queue: str
    target: str
    dry_run: bool
    filters: dict[str, Any]
    started_at: datetime
    finished_at: datetime | None = None
    tally: Tally = field(default_factory=Tally)
    #: Dry runs: one entry per selected message (id, from, to, action);
    #: real runs: the messages that were left behind and why.
    plan: list[dict[str, Any]] = field(default_factory=list)
    interrupted: bool = False
    warnings: list[str] = field(default_factory=list)
    elapsed_seconds: float = 0.0
    audit_id: int | None = None

    @property
    def counts(self) -> dict[str, int]:
        return dict(self.tally.counts)

    @property
    def complete(self) -> bool:
        return not any(self.tally.counts.get(k) for k in INCOMPLETE)

    def to_json(self) -> dict[str, Any]:
        return {
            "command": self.command,
            "queue": self.queue,
            "target": self.target,
            "dry_run": self.dry_run,
            "filters": self.filters,
            "counts": self.counts,
            "complete": self.complete,
            "interrupted": self.interrupted,
            "elapsed_seconds": round(self.elapsed_seconds, 3),
            "problems": list(self.tally.problems),
            "warnings": list(self.warnings),
            "plan": self.plan,
            "audit_id": self.audit_id,
        }


class TokenBucket:
    """
    ``rate`` tokens per second, at most ``burst`` saved.

    It starts empty, so a run never starts with a burst. Callers save up to
    one second of tokens (``burst=rate``): after a stall (a slow confirm, a
    busy machine) the run catches up within that second instead of losing
    the time for good, and no one-second window sees more than twice the
    rate. Connection set-up before the first message still counts against
    the achieved rate of a short run.
    """

    def __init__(
        self,
        rate: float,
        burst: float,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate <= 0:
            msg = f"rate must be positive, got {rate}"
            raise ValueError(msg)
        self.rate, self.burst, self._clock = rate, max(burst, 1.0), clock
        self._tokens, self._last = 0.0, clock()

    def wait_seconds(self, n: int) -> float:
        """Seconds until *n* tokens are available (0 when they are)."""
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        deficit = min(n, self.burst) - self._tokens
        # Below a nanotoken the float rounding, not the rate, is talking.
        return deficit / self.rate if deficit > 1e-9 else 0.0

    def take(self, n: int) -> None:
        self._tokens -= n

    def acquire(self, n: int, *, idle: Callable[[], None] = lambda: None) -> None:
        """Block until *n* tokens are there, calling *idle* while waiting."""
        wait = self.wait_seconds(n)
        while wait > 0:
            time.sleep(min(wait, 0.05))
            idle()
            wait = self.wait_seconds(n)
        self.take(n)


def batch_size_for(rate: float | None, default: int) -> int:
    """
    Smaller batches under a rate limit (5 per second): the pace stays even
    within a fifth of a second, and batches stay big enough for throughput.
    """
    if rate is None:
        return default
    return max(1, min(default, int(rate / 5)))


def label(letter: DeadLetter) -> str:
    props = letter.message.properties
    return (
        props.message_id or props.correlation_id or f"tag {letter.message.delivery_tag}"
    )


def copy_of(
    letter: DeadLetter, exchange: str, key: str, headers: dict[str, Any]
) -> amqp.OutgoingMessage:
    """The message to publish: same body and properties, new headers."""
    props = replace(letter.message.properties, headers=headers or None)
    return amqp.OutgoingMessage(
        exchange=exchange, routing_key=key, body=letter.message.body, properties=props
    )


class ReplayRun:
    """
    Per-batch work of one replay or move.

    ``handle`` is given the selected dead letters of a batch and returns
    ``(letter, outcome, ack)``; only confirmed copies are acked.
    """

    def __init__(
        self,
        *,
        queue: str,
        target: Target,
        report: RunReport,
        publisher: amqp.ConfirmingPublisher,
        queue_exists: Callable[[str], bool],
        declare_parking_lot: Callable[[str], None],
        parking_lot: str,
        max_replays: int,
        dry_run: bool,
        move: bool,
        confirm_timeout_seconds: float,
    ) -> None:
        self.queue, self.target, self.report = queue, target, report
        self.publisher = publisher
        self.queue_exists = queue_exists
        self.declare_parking_lot = declare_parking_lot
        self.parking_lot, self.max_replays = parking_lot, max_replays
        self.dry_run, self.move = dry_run, move
        self.timeout = confirm_timeout_seconds
        self.replayed_at = datetime.now(UTC)
        self._parking_ready = False

    def plan(self, letter: DeadLetter) -> tuple[str, amqp.OutgoingMessage | None]:
        """``(action, copy)``; ``copy`` is ``None`` when the origin is unknown."""
        headers = letter.message.properties.headers
        origin = letter.origin.queue
        if self.move:
            kept = {k: v for k, v in (headers or {}).items() if k not in _PER_QUEUE}
            return "move", copy_of(letter, "", self.target.queue or "", kept)
        # Replaying from the parking lot itself is the operator's explicit
        # decision, so the cap does not send it straight back there.
        if letter.replay_count >= self.max_replays and self.queue != self.parking_lot:
            reason = f"replayed {letter.replay_count} times (max {self.max_replays})"
            new = replay_headers(
                headers,
                origin_queue=origin,
                replayed_at=self.replayed_at,
                increment=False,
                extra={PARKED_REASON: reason},
            )
            return "park", copy_of(letter, "", self.parking_lot, new)
        if self.target.exchange is not None:
            exchange, key = self.target.exchange, self.target.routing_key
        elif self.target.queue is not None or origin:
            exchange, key = "", self.target.queue or origin or ""
        else:
            return "unknown_origin", None
        new = replay_headers(headers, origin_queue=origin, replayed_at=self.replayed_at)
        return "replay", copy_of(letter, exchange, key, new)

    def handle(self, letters: list[DeadLetter]) -> list[Result]:
        results: list[Result] = []
        sending: list[tuple[DeadLetter, str, amqp.OutgoingMessage]] = []
        for letter in letters:
            action, copy = self.plan(letter)
            problem = self._problem(letter, action, copy)
            where = None
            if copy is not None:
                where = (
                    copy.routing_key
                    if copy.exchange == ""
                    else f"{copy.exchange}:{copy.routing_key}"
                )
            # A dry run lists every message; a real run only those left behind
            # (a million-message replay should not keep a million entries).
            if self.dry_run or problem is not None:
                self.report.plan.append(
                    {
                        "id": label(letter),
                        "from": letter.origin.queue,
                        "to": where,
                        "action": problem or action,
                    }
                )
            if problem is not None or copy is None:
                results.append((letter, problem or action, False))
            else:
                sending.append((letter, action, copy))
        if self.dry_run:
            return results + [(x, f"would_{a}", False) for x, a, _c in sending]
        if sending:
            results.extend(self._publish(sending))
        return results

    def _problem(
        self, letter: DeadLetter, action: str, copy: amqp.OutgoingMessage | None
    ) -> str | None:
        tally = self.report.tally
        if copy is None:
            tally.add("unknown_origin", 0, f"{label(letter)}: no x-death and no --to")
            return "unknown_origin"
        if action == "park":
            if not self._parking_ready and not self.dry_run:
                self.declare_parking_lot(self.parking_lot)
                self._parking_ready = True
            return None
        if copy.exchange == "" and not self.queue_exists(copy.routing_key):
            tally.add(
                "origin_missing",
                0,
                f"{label(letter)}: queue {copy.routing_key!r} does not exist",
            )
            return "origin_missing"
        return None

    def _publish(
        self, sending: list[tuple[DeadLetter, str, amqp.OutgoingMessage]]
    ) -> list[Result]:
        outcome = self.publisher.publish_batch(
            [c for _x, _a, c in sending], timeout_seconds=self.timeout
        )
        results: list[Result] = []
        for (letter, action, _copy), result in zip(
            sending, outcome.outcomes, strict=True
        ):
            if result.status == "confirmed":
                results.append((letter, _DONE[action], True))
            else:
                problem = f"{label(letter)}: {result.status} ({result.reason})"
                self.report.tally.add(result.status, 0, problem)
                results.append((letter, result.status, False))
        return results
