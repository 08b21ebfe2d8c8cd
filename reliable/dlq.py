"""
Dead-letter tooling: inspect, replay, move, export, import and purge dead letters.

`DeadLetters` is the library API under ``reliable dlq``; it runs the same from
code or a Kubernetes Job. Every operation follows one rule: a message leaves
a queue only after what replaces it is safe (a republish confirmed by the
broker, or an export written and fsynced). Messages that are not selected, or
whose republish was returned, nacked or not confirmed, are held unacked while
the run lasts and go back when its channel closes: classic queues keep their
order; quorum queues put them back at the front, in order, and count a
delivery in ``x-delivery-count`` (see `reliable.amqp.QueueReader`).

A SIGKILL at any moment loses nothing: unacked messages return to the DLQ.
A message whose copy was confirmed but whose ack was not yet sent is
replayed twice (at-least-once); consumers dedupe through the inbox.
"""

from __future__ import annotations

import getpass
import logging
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

from reliable import amqp, db, errors
from reliable.dlq_filters import DeadLetter, Filter, Tally, group_counts
from reliable.dlq_headers import PARKED_REASON, replay_headers

logger = logging.getLogger(__name__)

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
    #: One entry per selected message: id, from, to, action (dry runs list all).
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
    """``rate`` tokens per second, at most ``burst`` saved; starts empty so a run never bursts."""

    def __init__(
        self, rate: float, burst: float, *, clock: Callable[[], float] = time.monotonic
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
        return max(0.0, (n - self._tokens) / self.rate)

    def take(self, n: int) -> None:
        self._tokens -= n


def vhost_of(amqp_url: str) -> str:
    """The vhost an AMQP URL points at (``/`` when the path is empty)."""
    path = urlsplit(amqp_url).path
    return unquote(path[1:]) if len(path) > 1 else "/"


Handler = Callable[[list[DeadLetter]], list[tuple[DeadLetter, str, bool]]]


class DeadLetters:
    """
    Dead-letter operations against one vhost.

    Args:
        amqp_url: Broker URL (the vhost is part of it).
        database_url: When given, runs are audited in ``reliable_dlq_runs`` and
            exception types are read from ``reliable_task_failures``. ``None``
            turns both off; everything else works without a database.
        db_schema: Schema of the reliable tables.
        batch_size: Messages taken and published per round (confirm window).
        confirm_timeout_seconds: How long to wait for a batch's confirms.

    .. versionadded:: 0.1.0
    """

    def __init__(
        self,
        amqp_url: str,
        *,
        database_url: str | None = None,
        db_schema: str = "reliable",
        batch_size: int = 500,
        confirm_timeout_seconds: float = 30.0,
    ) -> None:
        if batch_size < 1:
            msg = f"batch_size must be at least 1, got {batch_size}"
            raise ValueError(msg)
        self.amqp_url = amqp_url
        self.database_url = database_url
        self.db_schema = db_schema
        self.batch_size = batch_size
        self.confirm_timeout_seconds = confirm_timeout_seconds
        self._failures_available = database_url is not None

    # -- checks -------------------------------------------------------------------

    def check_queue(self, name: str) -> amqp.QueueState:
        """
        The live ready count of *name*.

        Raises:
            reliable.errors.QueueNotFound: It does not exist.
            reliable.errors.BrokerConnectionError: RabbitMQ cannot be reached.
        """
        with amqp.open_channel(self.amqp_url) as channel:
            state = channel.queue_state(name)
        if state is None:
            raise errors.QueueNotFound(queue=name)
        return state

    def queue_exists(self, name: str) -> bool:
        with amqp.open_channel(self.amqp_url) as channel:
            return channel.queue_state(name) is not None

    def check_broker(self) -> None:
        """
        Connect once, so an unreachable broker fails before any work starts.

        Raises:
            reliable.errors.BrokerConnectionError: RabbitMQ cannot be reached.
        """
        with amqp.open_channel(self.amqp_url):
            pass

    def _check_target(self, target: Target) -> None:
        with amqp.open_channel(self.amqp_url) as channel:
            if target.queue is not None and channel.queue_state(target.queue) is None:
                raise errors.QueueNotFound(
                    f"target queue {target.queue!r} does not exist; create it or pick another with --to",
                    queue=target.queue,
                )
            if target.exchange is not None and not channel.exchange_exists(
                target.exchange
            ):
                raise errors.ExchangeNotFound(
                    f"target exchange {target.exchange!r} does not exist; create it or pick another with --to-exchange",
                    exchange=target.exchange,
                )

    # -- failure records ----------------------------------------------------------

    def attach_failures(self, letters: Sequence[DeadLetter]) -> None:
        """Fill ``exception_type`` from ``reliable_task_failures`` where records exist."""
        if not self._failures_available or not self.database_url:
            return
        ids = sorted({t for t in (x.task_id for x in letters) if t})
        if not ids:
            return
        try:
            conn = db.connect(self.database_url, autocommit=True)
            try:
                rows = db.query(
                    conn, "dlq_task_failures", {"task_ids": ids}, schema=self.db_schema
                )
            finally:
                conn.close()
        except errors.DatabaseError as exc:
            # No failure records (table not installed, database down): the
            # tool works without them, so look no further in this process.
            logger.warning("failure records unavailable: %s", exc)
            self._failures_available = False
            return
        by_id = {r["task_id"]: r for r in rows}
        for letter in letters:
            row = by_id.get(letter.task_id or "")
            if row is not None:
                letter.exception_type = row["exception_type"]
                letter.exception_message = row["exception_message"]

    # -- the engine ---------------------------------------------------------------

    def _scan(
        self,
        queue: str,
        flt: Filter,
        report: RunReport,
        handle: Handler,
        *,
        batch_size: int | None = None,
        stop: Callable[[], bool] | None = None,
        progress: Callable[[int], None] | None = None,
        before_batch: Callable[[int], None] | None = None,
        scan_limit: int | None = None,
    ) -> None:
        """
        Take the messages present at the start, select, hand selected ones to *handle*.

        *handle* returns ``(letter, outcome, ack)``; only ``ack=True`` messages
        are removed, everything else is held and released at the end.
        """
        size = batch_size or self.batch_size
        now = datetime.now(UTC)
        selected = 0
        with amqp.QueueReader(self.amqp_url, queue, prefetch=size) as reader:
            try:
                state = reader.state()
            except errors.BrokerRefused as exc:
                if exc.reply_code == 404:
                    raise errors.QueueNotFound(queue=queue) from None
                raise
            # Only messages present at the start are looked at, so a replayed
            # message that dies again during the run is not replayed twice.
            budget = (
                state.message_count
                if scan_limit is None
                else min(state.message_count, scan_limit)
            )
            taken = 0
            while taken < budget:
                if stop is not None and stop():
                    report.interrupted = True
                    break
                want = min(size, budget - taken)
                if flt.limit is not None:
                    want = min(want, max(1, flt.limit - selected))
                if before_batch is not None:
                    before_batch(want)
                messages = reader.take(want)
                if not messages:
                    break
                taken += len(messages)
                letters = [
                    DeadLetter.from_message(m, dead_letter_queue=queue)
                    for m in messages
                ]
                report.tally.add("scanned", len(letters))
                self.attach_failures(letters)
                chosen = []
                for letter in letters:
                    if (flt.limit is None or selected < flt.limit) and flt.matches(
                        letter, now
                    ):
                        chosen.append(letter)
                        selected += 1
                    else:
                        report.tally.add("not_selected")
                report.tally.add("selected", len(chosen))
                results = handle(chosen) if chosen else []
                reader.ack([x.message.delivery_tag for x, _o, ack in results if ack])
                for _letter, outcome, _ack in results:
                    report.tally.add(outcome)
                if progress is not None:
                    progress(len(letters))
                if flt.limit is not None and selected >= flt.limit:
                    break

    def _finish(self, report: RunReport, started: float) -> RunReport:
        report.finished_at = datetime.now(UTC)
        report.elapsed_seconds = time.monotonic() - started
        if report.command != "show":
            self._audit(report)
        return report

    # -- show -----------------------------------------------------------------------

    def peek(
        self, queue: str, flt: Filter | None = None, *, scan_limit: int | None = None
    ) -> tuple[list[DeadLetter], RunReport]:
        """
        The dead letters in *queue* that match, without removing any.

        Every message is held unacked and released when the read ends, so the
        queue keeps the same messages in the same order. On a quorum queue each
        look counts as a delivery (``x-delivery-count`` + 1); see docs/dlq.md
        for the delivery-limit consequences.
        """
        flt = flt or Filter()
        started = time.monotonic()
        report = RunReport("show", queue, "", True, flt.to_json(), datetime.now(UTC))
        found: list[DeadLetter] = []

        def handle(letters: list[DeadLetter]) -> list[tuple[DeadLetter, str, bool]]:
            found.extend(letters)
            return [(x, "shown", False) for x in letters]

        self._scan(queue, flt, report, handle, scan_limit=scan_limit)
        return found, self._finish(report, started)

    # -- replay / move ------------------------------------------------------------

    def replay(
        self,
        queue: str,
        flt: Filter | None = None,
        *,
        target: Target | None = None,
        rate: float | None = None,
        max_replays: int = 5,
        parking_lot: str | None = None,
        parking_lot_type: Literal["classic", "quorum"] = "classic",
        dry_run: bool = False,
        stop: Callable[[], bool] | None = None,
        progress: Callable[[int], None] | None = None,
        command: Command = "replay",
    ) -> RunReport:
        """
        Republish dead letters to where they came from (or to *target*) and ack each after its confirm.

        Args:
            queue: The dead-letter queue.
            flt: Which messages; default all.
            target: Override the origin; default: the newest ``x-death`` queue.
            rate: Messages per second (token bucket), ``None`` for no limit.
            max_replays: A message already replayed this many times goes to
                *parking_lot* instead (default ``<queue>.parking-lot``, declared
                durable with *parking_lot_type* if missing).
            dry_run: Plan only; nothing is published or acked.
            stop: Polled between batches; when true the run ends after the
                in-flight confirms and acks.
            progress: Called with the number of messages handled per batch.

        Raises:
            reliable.errors.QueueNotFound: *queue* or the target queue is missing.
            reliable.errors.ExchangeNotFound: The target exchange is missing.
            reliable.errors.BrokerConnectionError: RabbitMQ cannot be reached.
        """
        flt = flt or Filter()
        target = target or Target()
        parking = parking_lot or f"{queue}.parking-lot"
        started = time.monotonic()
        report = RunReport(
            command, queue, target.describe(), dry_run, flt.to_json(), datetime.now(UTC)
        )
        self.check_queue(queue)  # before anything is taken
        if target.queue is not None or target.exchange is not None:
            self._check_target(target)
        bucket = TokenBucket(rate, burst=max(1.0, rate / 20)) if rate else None
        size = (
            self.batch_size
            if rate is None
            else max(1, min(self.batch_size, int(rate / 20) or 1))
        )
        publisher = amqp.ConfirmingPublisher(self.amqp_url, window=size)
        existing: dict[str, bool] = {}
        parked_declared = False
        replayed_at = datetime.now(UTC)

        def queue_exists(name: str) -> bool:
            if name not in existing:
                with amqp.open_channel(self.amqp_url) as channel:
                    existing[name] = channel.queue_state(name) is not None
            return existing[name]

        def plan_one(
            letter: DeadLetter,
        ) -> tuple[str, amqp.OutgoingMessage | None, str]:
            props = letter.message.properties
            origin = letter.origin.queue
            if command == "move":
                out_headers = {
                    k: v
                    for k, v in (props.headers or {}).items()
                    if k not in ("x-delivery-count", "x-acquired-count")
                }
                exchange, key, action = "", target.queue or "", "move"
            elif letter.replay_count >= max_replays and queue != parking:
                out_headers = replay_headers(
                    props.headers,
                    origin_queue=origin,
                    replayed_at=replayed_at,
                    increment=False,
                    extra={
                        PARKED_REASON: f"replayed {letter.replay_count} times (max {max_replays})"
                    },
                )
                exchange, key, action = "", parking, "park"
            else:
                if target.exchange is not None:
                    exchange, key = target.exchange, target.routing_key
                elif target.queue is not None:
                    exchange, key = "", target.queue
                elif origin:
                    exchange, key = "", origin
                else:
                    return "unknown_origin", None, ""
                out_headers = replay_headers(
                    props.headers, origin_queue=origin, replayed_at=replayed_at
                )
                action = "replay"
            copy = amqp.OutgoingMessage(
                exchange=exchange,
                routing_key=key,
                body=letter.message.body,
                properties=_with_headers(props, out_headers),
            )
            return action, copy, key if exchange == "" else f"{exchange}:{key}"

        def handle(letters: list[DeadLetter]) -> list[tuple[DeadLetter, str, bool]]:
            nonlocal parked_declared
            results: list[tuple[DeadLetter, str, bool]] = []
            sending: list[tuple[DeadLetter, str, amqp.OutgoingMessage]] = []
            for letter in letters:
                action, copy, where = plan_one(letter)
                entry = {
                    "id": _label(letter),
                    "from": letter.origin.queue,
                    "to": where or None,
                    "action": action,
                }
                if copy is None:
                    report.tally.add(
                        "unknown_origin", 0, f"{_label(letter)}: no x-death and no --to"
                    )
                    results.append((letter, action, False))
                    report.plan.append(entry)
                    continue
                if action == "park" and not parked_declared and not dry_run:
                    self._declare_parking_lot(parking, kind=parking_lot_type)
                    parked_declared = True
                    existing[parking] = True
                if (
                    copy.exchange == ""
                    and action != "park"
                    and not queue_exists(copy.routing_key)
                ):
                    entry["action"] = "origin_missing"
                    report.plan.append(entry)
                    report.tally.add(
                        "origin_missing",
                        0,
                        f"{_label(letter)}: queue {copy.routing_key!r} does not exist",
                    )
                    results.append((letter, "origin_missing", False))
                    continue
                report.plan.append(entry)
                sending.append((letter, action, copy))
            if dry_run:
                return results + [(x, f"would_{a}", False) for x, a, _c in sending]
            if sending:
                outcome = publisher.publish_batch(
                    [c for _x, _a, c in sending],
                    timeout_seconds=self.confirm_timeout_seconds,
                )
                for (letter, action, _copy), result in zip(
                    sending, outcome.outcomes, strict=True
                ):
                    if result.status == "confirmed":
                        results.append(
                            (
                                letter,
                                {
                                    "replay": "replayed",
                                    "park": "parked",
                                    "move": "moved",
                                }[action],
                                True,
                            )
                        )
                    else:
                        report.tally.add(
                            result.status,
                            0,
                            f"{_label(letter)}: {result.status} ({result.reason})",
                        )
                        results.append((letter, result.status, False))
            return results

        def before_batch(n: int) -> None:
            if bucket is None or dry_run:
                return
            wait = bucket.wait_seconds(n)
            while wait > 0:
                time.sleep(min(wait, 0.05))
                publisher.poll()
                wait = bucket.wait_seconds(n)
            bucket.take(n)

        try:
            self._scan(
                queue,
                flt,
                report,
                handle,
                batch_size=size,
                stop=stop,
                progress=progress,
                before_batch=before_batch,
            )
        finally:
            publisher.close()
        if report.tally.counts.get("replayed") or report.tally.counts.get("moved"):
            report.warnings.append(
                "a message whose copy was confirmed just before a crash may be delivered twice; consumers should dedupe"
            )
        return self._finish(report, started)

    def move(
        self,
        source: str,
        destination: str,
        flt: Filter | None = None,
        *,
        rate: float | None = None,
        dry_run: bool = False,
        stop: Callable[[], bool] | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> RunReport:
        """Move messages unchanged (except ``x-delivery-count``) from *source* to queue *destination*."""
        return self.replay(
            source,
            flt,
            target=Target(queue=destination),
            rate=rate,
            dry_run=dry_run,
            stop=stop,
            progress=progress,
            command="move",
        )

    def _declare_parking_lot(self, name: str, *, kind: str) -> None:
        with amqp.open_channel(self.amqp_url) as channel:
            if channel.queue_state(name) is not None:
                return
            args = {"x-queue-type": kind} if kind == "quorum" else {}
            channel.declare_queue(name, durable=True, arguments=args)
            logger.info(
                "declared parking lot %r",
                name,
                extra={"action": "dlq_parking_lot", "queue": name},
            )

    # -- purge --------------------------------------------------------------------

    def purge(
        self,
        queue: str,
        flt: Filter | None = None,
        *,
        dry_run: bool = False,
        stop: Callable[[], bool] | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> RunReport:
        """Remove every message (no filter) or only the matching ones."""
        flt = flt or Filter()
        started = time.monotonic()
        report = RunReport(
            "purge", queue, "", dry_run, flt.to_json(), datetime.now(UTC)
        )
        state = self.check_queue(queue)
        if flt.selects_all and flt.limit is None and not dry_run:
            with amqp.open_channel(self.amqp_url) as channel:
                removed = channel.purge_queue(queue)
            report.tally.add("purged", removed)
            return self._finish(report, started)
        if flt.selects_all and flt.limit is None:
            report.tally.add("would_purge", state.message_count)
            return self._finish(report, started)

        def handle(letters: list[DeadLetter]) -> list[tuple[DeadLetter, str, bool]]:
            for x in letters:
                report.plan.append(
                    {
                        "id": _label(x),
                        "from": x.origin.queue,
                        "to": None,
                        "action": "purge",
                    }
                )
            return [
                (x, "would_purge" if dry_run else "purged", not dry_run)
                for x in letters
            ]

        self._scan(queue, flt, report, handle, stop=stop, progress=progress)
        return self._finish(report, started)

    # -- audit ----------------------------------------------------------------------

    def _audit(self, report: RunReport) -> None:
        if not self.database_url:
            return
        try:
            conn = db.connect(self.database_url)
            try:
                with db.transaction(conn):
                    rows = db.query(
                        conn,
                        "insert_dlq_run",
                        {
                            "started_at": report.started_at,
                            "os_user": _os_user(),
                            "hostname": socket.gethostname(),
                            "command": report.command,
                            "queue": report.queue,
                            "target": report.target or None,
                            "filters": db.jsonb(report.filters),
                            "counts": db.jsonb(report.counts),
                            "dry_run": report.dry_run,
                            "interrupted": report.interrupted,
                        },
                        schema=self.db_schema,
                    )
                report.audit_id = int(rows[0]["id"])
            finally:
                conn.close()
        except errors.DatabaseError as exc:
            # The messages have moved already; a missing audit row must not
            # make the run look failed, but the operator has to know.
            report.warnings.append(f"run not audited: {exc}")

    def history(
        self, *, queue: str | None = None, limit: int = 50
    ) -> list[dict[str, Any]]:
        """
        Audited runs, newest first.

        Raises:
            reliable.errors.ConfigError: No database URL configured.
            reliable.errors.DatabaseError: PostgreSQL unreachable or schema missing.
        """
        if not self.database_url:
            msg = "no database configured; set RELIABLE_DATABASE_URL or --database-url to keep a run history"
            raise errors.ConfigError(msg, key="database_url")
        conn = db.connect(self.database_url)
        try:
            rows = db.query(
                conn,
                "list_dlq_runs",
                {"queue": queue, "limit": limit},
                schema=self.db_schema,
            )
            conn.rollback()
        finally:
            conn.close()
        return rows


# -- helpers ------------------------------------------------------------------------


def _with_headers(props: amqp.Properties, headers: dict[str, Any]) -> amqp.Properties:
    from dataclasses import replace

    # delivery_mode None would make the copy transient: keep what it was.
    return replace(props, headers=headers or None)


def _label(letter: DeadLetter) -> str:
    props = letter.message.properties
    return (
        props.message_id or props.correlation_id or f"tag {letter.message.delivery_tag}"
    )


def _os_user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry in some containers
        return "unknown"


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
