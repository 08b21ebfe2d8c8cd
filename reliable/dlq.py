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

import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

from reliable import amqp, dlq_audit, errors
from reliable.dlq_discovery import read_delivery_limit
from reliable.dlq_filters import DeadLetter, Filter, summarize
from reliable.dlq_guard import DeliveryLimitGuard
from reliable.dlq_replay import (
    INCOMPLETE,
    Command,
    ReplayRun,
    RunReport,
    Target,
    TokenBucket,
    batch_size_for,
    label,
)
from reliable.dlq_scan import Handler, Scan
from reliable.metrics import Metrics

logger = logging.getLogger(__name__)

__all__ = [
    "INCOMPLETE",
    "Command",
    "DeadLetters",
    "Filter",
    "ReplayFilter",
    "ReplayReport",
    "RunReport",
    "Target",
    "TokenBucket",
    "replay",
    "summarize",
    "vhost_of",
]

#: Names the style guide uses for the public API (`reliable.ReplayFilter`, ...).
ReplayFilter = Filter
ReplayReport = RunReport


def vhost_of(amqp_url: str) -> str:
    """The vhost an AMQP URL points at (``/`` when the path is empty)."""
    path = urlsplit(amqp_url).path
    return unquote(path[1:]) if len(path) > 1 else "/"


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
        metrics: When given, ``reliable_dlq_replayed``/``_parked`` count
            confirmed replays and parkings, ``reliable_dlq_depth`` the depth
            seen by each check.

    .. versionadded:: 0.1.0
    """

    def __init__(
        self,
        amqp_url: str,
        *,
        database_url: str | None = None,
        db_schema: str = "reliable",
        management_url: str | None = None,
        batch_size: int = 500,
        confirm_timeout_seconds: float = 30.0,
        metrics: Metrics | None = None,
    ) -> None:
        if batch_size < 1:
            msg = f"batch_size must be at least 1, got {batch_size}"
            raise ValueError(msg)
        self._check_channel: amqp.Channel | None = None
        self.amqp_url = amqp_url
        self.database_url = database_url
        self.db_schema = db_schema
        self.batch_size = batch_size
        self.confirm_timeout_seconds = confirm_timeout_seconds
        self._failures_available = database_url is not None
        self.management_url = management_url
        self.metrics = metrics
        self._limits: dict[str, int | None] = {}

    # -- checks -------------------------------------------------------------------

    @contextlib.contextmanager
    def _checks(self) -> Iterator[amqp.Channel]:
        """One channel for the existence checks of a run (each connection costs a round trip or three)."""
        if self._check_channel is not None:
            yield self._check_channel
            return
        with amqp.open_channel(self.amqp_url) as channel:
            self._check_channel = channel
            try:
                yield channel
            finally:
                self._check_channel = None

    def check_queue(self, name: str) -> amqp.QueueState:
        """
        The live ready count of *name*.

        Raises:
            reliable.errors.QueueNotFound: It does not exist.
            reliable.errors.BrokerConnectionError: RabbitMQ cannot be reached.
        """
        with self._checks() as channel:
            state = channel.queue_state(name)
        if state is None:
            raise errors.QueueNotFound(queue=name)
        if self.metrics is not None:
            self.metrics.dlq_depth.labels(name).set(state.message_count)
        return state

    def queue_exists(self, name: str) -> bool:
        with self._checks() as channel:
            return channel.queue_state(name) is not None

    def check_broker(self) -> None:
        """
        Connect once, so an unreachable broker fails before any work starts.

        Raises:
            reliable.errors.BrokerConnectionError: RabbitMQ cannot be reached.
        """
        with self._checks():
            pass

    def _check_target(self, target: Target) -> None:
        with self._checks() as channel:
            if target.queue is not None and channel.queue_state(target.queue) is None:
                msg = f"target queue {target.queue!r} does not exist; create it or pick another with --to"
                raise errors.QueueNotFound(
                    msg,
                    queue=target.queue,
                )
            if target.exchange is not None and not channel.exchange_exists(
                target.exchange
            ):
                msg = f"target exchange {target.exchange!r} does not exist; create it or pick another with --to-exchange"
                raise errors.ExchangeNotFound(
                    msg,
                    exchange=target.exchange,
                )

    def delivery_limit(self, queue: str) -> int | None:
        """
        The delivery limit *queue* enforces, if it is a quorum queue with one.

        Read through the management API (arguments, effective policy, broker
        version); without a management URL, or when the API fails, ``None``
        and looks at a quorum DLQ are not protected (see `DeliveryLimitGuard`).
        """
        if self.management_url is None:
            return None
        if queue not in self._limits:
            self._limits[queue] = read_delivery_limit(
                self.management_url, vhost_of(self.amqp_url), queue
            )
        return self._limits[queue]

    # -- failure records ----------------------------------------------------------

    def attach_failures(self, letters: Sequence[DeadLetter]) -> None:
        """Fill ``exception_type`` from ``reliable_task_failures`` where records exist."""
        if not self._failures_available or not self.database_url:
            return
        ids = sorted({t for t in (x.task_id for x in letters) if t})
        if not ids:
            return
        try:
            by_id = dlq_audit.failure_records(self.database_url, self.db_schema, ids)
        except errors.DatabaseError as exc:
            # No failure records (table not installed, database down): the
            # tool works without them, so look no further in this process.
            logger.warning("failure records unavailable: %s", exc)
            self._failures_available = False
            return
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
        if flt.exceptions and not self._failures_available:
            report.warnings.append(
                "--exception matches nothing without failure records; configure a database"
            )
        limit = self.delivery_limit(queue)
        guard = (
            DeliveryLimitGuard(
                self.amqp_url,
                queue,
                limit=limit,
                confirm_timeout_seconds=self.confirm_timeout_seconds,
            )
            if limit is not None
            else None
        )
        scan = Scan(
            queue=queue,
            flt=flt,
            report=report,
            handle=handle,
            attach=self.attach_failures,
            size=size,
            now=now,
            guard=guard,
            stop=stop,
            progress=progress,
            before_batch=before_batch,
            scan_limit=scan_limit,
        )
        try:
            scan.run(self.amqp_url)
        finally:
            if guard is not None:
                guard.close()

    def _finish(self, report: RunReport, started: float) -> RunReport:
        report.finished_at = datetime.now(UTC)
        report.elapsed_seconds = time.monotonic() - started
        if self.metrics is not None and not report.dry_run:
            counts = report.tally.counts
            self.metrics.dlq_replayed.labels(report.queue).inc(
                counts.get("replayed", 0) + counts.get("moved", 0)
            )
            self.metrics.dlq_parked.labels(report.queue).inc(counts.get("parked", 0))
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
        with self._checks():
            return self._replay(
                queue,
                flt or Filter(),
                target or Target(),
                rate=rate,
                max_replays=max_replays,
                parking_lot=parking_lot,
                parking_lot_type=parking_lot_type,
                dry_run=dry_run,
                stop=stop,
                progress=progress,
                command=command,
            )

    def _replay(
        self,
        queue: str,
        flt: Filter,
        target: Target,
        *,
        rate: float | None,
        max_replays: int,
        parking_lot: str | None,
        parking_lot_type: Literal["classic", "quorum"],
        dry_run: bool,
        stop: Callable[[], bool] | None,
        progress: Callable[[int], None] | None,
        command: Command,
    ) -> RunReport:
        started = time.monotonic()
        report = RunReport(
            command, queue, target.describe(), dry_run, flt.to_json(), datetime.now(UTC)
        )
        self.check_queue(queue)  # before anything is taken
        if not target.is_origin:
            self._check_target(target)
        size = batch_size_for(rate, self.batch_size)
        bucket = TokenBucket(rate, burst=rate) if rate and not dry_run else None
        publisher = amqp.ConfirmingPublisher(self.amqp_url, window=size)
        existing: dict[str, bool] = {}

        def queue_exists(name: str) -> bool:
            if name not in existing:
                existing[name] = self.queue_exists(name)
            return existing[name]

        run = ReplayRun(
            queue=queue,
            target=target,
            report=report,
            publisher=publisher,
            queue_exists=queue_exists,
            declare_parking_lot=lambda name: self._declare_parking_lot(
                name, kind=parking_lot_type
            ),
            parking_lot=parking_lot or f"{queue}.parking-lot",
            max_replays=max_replays,
            dry_run=dry_run,
            move=command == "move",
            confirm_timeout_seconds=self.confirm_timeout_seconds,
        )

        def before_batch(n: int) -> None:
            if bucket is not None:
                bucket.acquire(n, idle=publisher.poll)

        try:
            self._scan(
                queue,
                flt,
                report,
                run.handle,
                batch_size=size,
                stop=stop,
                progress=progress,
                before_batch=before_batch,
            )
        finally:
            publisher.close()
        if report.tally.counts.get("replayed") or report.tally.counts.get("moved"):
            report.warnings.append(
                "a message whose copy was confirmed just before a crash may be "
                "delivered twice; consumers should dedupe"
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
        with self._checks() as channel:
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
            for x in letters if dry_run else ():
                report.plan.append(
                    {
                        "id": label(x),
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
            report.audit_id = dlq_audit.record_run(
                self.database_url, self.db_schema, report
            )
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
        return dlq_audit.list_runs(
            self.database_url, self.db_schema, queue=queue, limit=limit
        )


# -- helpers ------------------------------------------------------------------------


def replay(
    amqp_url: str,
    queue: str,
    flt: Filter | None = None,
    *,
    management_url: str | None = None,
    database_url: str | None = None,
    **options: Any,
) -> RunReport:
    """
    Replay the dead letters of *queue* to their origin: `DeadLetters.replay` in one call.

    *options* are those of `DeadLetters.replay` (``target``, ``rate``,
    ``max_replays``, ``dry_run``, ...).

    .. versionadded:: 0.1.0
    """
    letters = DeadLetters(
        amqp_url, management_url=management_url, database_url=database_url
    )
    return letters.replay(queue, flt, **options)
