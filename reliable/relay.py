"""
`OutboxRelay`: publish committed outbox rows to RabbitMQ with confirms.

One loop iteration claims a batch (a short autocommit statement that leases
the rows), publishes it with pipelined confirms and ``mandatory``, then
settles every row in at most three statements: confirmed rows are deleted (or
stamped when retention keeps them), returned/nacked/refused rows get an
attempt, an error and a backoff (or die), and unconfirmed rows (fate unknown)
are handed back to be sent again soon. No transaction is open while the
broker is being talked to.

When nothing is due the relay waits on LISTEN (the outbox trigger NOTIFYs at
commit) with polling as the safety net, answering broker heartbeats as it
waits. Lost connections to RabbitMQ or PostgreSQL are reopened with
exponential backoff (tenacity); rows claimed by a relay that died come back
when their lease runs out, so nothing is lost and a crash between confirm and
mark can only cause a duplicate.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import tenacity

from reliable import amqp, db, errors, outbox_store
from reliable.log import get_logger
from reliable.metrics import Metrics
from reliable.outbox_store import ClaimedRow, Failure
from reliable.relay_config import RelayConfig, RelayStats
from reliable.retry import RetryPolicy

logger = get_logger(__name__)

NOTIFY_CHANNEL = "reliable_outbox"

__all__ = ["NOTIFY_CHANNEL", "OutboxRelay", "RelayConfig", "RelayStats"]


class OutboxRelay:
    """
    Move committed outbox rows to RabbitMQ; run one per process, as many processes as needed.

    ::

        relay = OutboxRelay(database_url=dsn, amqp_url=url)
        relay.run()  # until relay.stop() (e.g. from a SIGTERM handler)

    Args:
        database_url: PostgreSQL URL of the database holding the outbox.
        amqp_url: RabbitMQ URL to publish to.
        schema: Schema of ``reliable_outbox``.
        config: Batch, window, lease, timeouts and retention.
        retry_policy: Backoff and attempt budget for returned/nacked/refused rows.
        metrics: Where to count; a private registry by default.

    .. versionadded:: 0.1.0
    """

    def __init__(
        self,
        *,
        database_url: str,
        amqp_url: str,
        schema: str = "reliable",
        config: RelayConfig | None = None,
        retry_policy: RetryPolicy | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.database_url = database_url
        self.amqp_url = amqp_url
        self.schema = schema
        self.config = config or RelayConfig()
        self.retry_policy = retry_policy or RetryPolicy()
        self.metrics = metrics if metrics is not None else Metrics()
        self.stats = RelayStats()
        self.token = uuid.uuid4()
        self._stop = threading.Event()
        self._conn: db.Connection | None = None
        self._listener: db.Listener | None = None
        self._publisher = amqp.ConfirmingPublisher(amqp_url, window=self.config.window)
        self._rng = random.Random()  # jitter only, not security
        # Settlements that failed because PostgreSQL went away; replayed first
        # after reconnecting so confirmed rows are not published twice.
        self._unsettled: list[Callable[[db.Connection], object]] = []
        self._next_status = 0.0
        self._next_cleanup = 0.0
        self._executor: ThreadPoolExecutor | None = None

    def __repr__(self) -> str:
        return f"OutboxRelay(schema={self.schema!r}, token={self.token})"

    # -- lifecycle -------------------------------------------------------------

    def stop(self) -> None:
        """Ask the relay to finish the batch in flight and return (signal-safe)."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def run(self) -> RelayStats:
        """Relay until `stop()`; connection losses are retried, never fatal."""
        logger.info(
            "relay starting", extra={"action": "relay.start", "token": str(self.token)}
        )
        try:
            while not self.stopping:
                try:
                    self._connect_with_backoff()
                    self._loop(once=False)
                except (errors.BrokerError, errors.DatabaseError) as exc:
                    if self._stop.is_set():
                        break
                    self.stats.reconnects += 1
                    logger.warning(
                        "relay lost a connection, reconnecting: %s",
                        exc,
                        extra={"action": "relay.reconnect"},
                    )
                    self._disconnect()
        finally:
            self.close()
        logger.info(
            "relay stopped",
            extra={
                "action": "relay.stop",
                "published": self.stats.published,
                "failed": self.stats.failed,
            },
        )
        return self.stats

    def run_once(self) -> RelayStats:
        """Publish everything due now, then return (connection errors propagate)."""
        try:
            self._open()
            self._loop(once=True)
        finally:
            self.close()
        return self.stats

    def close(self) -> None:
        self._disconnect()

    # -- connections -------------------------------------------------------------

    def _open(self) -> None:
        if self._conn is None or self._conn.closed:
            self._conn = db.connect(self.database_url, autocommit=True)
            if not self.config.synchronous_commit:
                db.execute(self._conn, "relay_session", schema=self.schema)
        if self._listener is None or self._listener.closed:
            self._listener = db.Listener(self.database_url, NOTIFY_CHANNEL)
        self._publisher.connect()
        while self._unsettled:
            self._unsettled[0](self._conn)
            self._unsettled.pop(0)

    def _connect_with_backoff(self) -> None:
        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(
                (errors.BrokerError, errors.DatabaseError)
            ),
            wait=tenacity.wait_exponential(
                multiplier=0.2, max=self.config.reconnect_max_seconds
            )
            + tenacity.wait_random(0, 0.2),
            stop=lambda _state: self.stopping,
            sleep=self._sleep,
            before_sleep=self._log_retry,
            reraise=True,
        )
        for attempt in retrying:
            with attempt:
                try:
                    self._open()
                except (errors.BrokerError, errors.DatabaseError):
                    self._disconnect()
                    raise

    def _log_retry(self, state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        logger.warning(
            "cannot connect (attempt %d), retrying in %.1fs: %s",
            state.attempt_number,
            state.upcoming_sleep,
            exc,
            extra={"action": "relay.connect_retry"},
        )

    def _sleep(self, seconds: float) -> None:
        self._stop.wait(seconds)

    def _disconnect(self) -> None:
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True)
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # a dead connection may fail to close
                logger.debug("closing the database connection failed", exc_info=True)
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        self._publisher.close()

    # -- the loop ----------------------------------------------------------------

    def _loop(self, *, once: bool) -> None:
        """
        Claim, publish and settle batches until stopped (or, *once*, until nothing is due).

        While a full batch is being published, the next claim and the previous
        batch's settlement run on a database worker thread, so PostgreSQL and
        RabbitMQ round trips overlap instead of adding up. The worker runs
        tasks in submission order, so a batch is always settled before any
        claim submitted after it.
        """
        ahead: Future[list[ClaimedRow]] | None = None
        settling: Future[None] | None = None
        try:
            while not self.stopping:
                if ahead is None and settling is not None:
                    # A claim on this thread must see the last batch settled.
                    settling.result()
                    settling = None
                rows = ahead.result() if ahead is not None else self._claim()
                ahead = None
                if settling is not None:
                    settling.result()  # surface a failed settlement now
                    settling = None
                full = len(rows) >= self.config.batch_size
                if full and not self.stopping:
                    ahead = self._worker().submit(self._claim)
                if rows:
                    started = time.perf_counter()
                    result = self._publish(rows)
                    settling = self._worker().submit(
                        self._settle_batch, rows, result, started
                    )
                    self._check_connection(result)
                else:
                    self.metrics.relay_last_batch.set(time.time())
                self._housekeeping()
                if once:
                    if not rows:
                        self.refresh_gauges(self._require_conn())
                        return
                    continue
                if not full:
                    if settling is not None:
                        settling.result()
                        settling = None
                    self._idle_wait()
        finally:
            self._drain_worker(ahead, settling)

    def _drain_worker(
        self, ahead: Future[list[ClaimedRow]] | None, settling: Future[None] | None
    ) -> None:
        """Finish the pending settlement and hand back rows claimed ahead but never sent."""
        try:
            if settling is not None:
                settling.result()
            if ahead is not None:
                ids = [r.id for r in ahead.result()]
                if ids:
                    outbox_store.release(
                        self._require_conn(),
                        ids,
                        schema=self.schema,
                        token=self.token,
                        delay_seconds=0.0,
                    )
        except errors.ReliableError as exc:
            # The rows come back when their lease runs out; settlements are retried.
            logger.warning(
                "could not finish database work while stopping: %s",
                exc,
                extra={"action": "relay.drain"},
            )

    def _worker(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="reliable-relay-db"
            )
        return self._executor

    def step(self) -> int:
        """Claim, publish and settle one batch without overlap; return the rows claimed."""
        rows = self._claim()
        if not rows:
            self.metrics.relay_last_batch.set(time.time())
            return 0
        started = time.perf_counter()
        result = self._publish(rows)
        self._settle_batch(rows, result, started)
        self._check_connection(result)
        return len(rows)

    def _claim(self) -> list[ClaimedRow]:
        return outbox_store.claim(
            self._require_conn(),
            schema=self.schema,
            token=self.token,
            limit=self.config.batch_size,
            lease_seconds=self.config.lease_seconds,
        )

    def _publish(self, rows: Sequence[ClaimedRow]) -> amqp.PublishResult:
        try:
            return self._publisher.publish_batch(
                [r.to_message() for r in rows],
                timeout_seconds=self.config.confirm_timeout_seconds,
            )
        except errors.BrokerError:
            # Nothing was sent: hand the rows back at once, then reconnect.
            ids = [r.id for r in rows]
            self._settle_all(
                [
                    lambda c: outbox_store.release(
                        c, ids, schema=self.schema, token=self.token, delay_seconds=0.0
                    )
                ]
            )
            raise

    def _settle_batch(
        self, rows: Sequence[ClaimedRow], result: amqp.PublishResult, started: float
    ) -> None:
        self._settle(rows, result)
        self.stats.batches += 1
        self.metrics.outbox_batch_seconds.observe(time.perf_counter() - started)
        self.metrics.relay_last_batch.set(time.time())

    def _check_connection(self, result: amqp.PublishResult) -> None:
        # Connection lost with confirms outstanding: let the caller reconnect.
        if not self._publisher.is_open and any(
            o.status == "unconfirmed" for o in result.outcomes
        ):
            msg = "RabbitMQ connection lost with confirms outstanding; reconnecting"
            raise errors.BrokerConnectionError(msg)

    def _settle(self, rows: Sequence[ClaimedRow], result: amqp.PublishResult) -> None:
        confirmed: list[ClaimedRow] = []
        failures: list[Failure] = []
        unconfirmed: list[ClaimedRow] = []
        for row, outcome in zip(rows, result.outcomes, strict=True):
            if outcome.status == "confirmed":
                confirmed.append(row)
            elif outcome.status == "unconfirmed":
                unconfirmed.append(row)
            else:
                failures.append(self._failure(row, outcome))
        keep = self.config.keep_published_seconds > 0
        confirmed_ids = [r.id for r in confirmed]
        unconfirmed_ids = [r.id for r in unconfirmed]
        self._count(confirmed, failures, unconfirmed, rows, result)
        self._settle_all(
            [
                lambda c: self._mark(c, confirmed_ids, keep=keep, rows=confirmed),
                lambda c: outbox_store.record_failures(
                    c, failures, schema=self.schema, token=self.token
                ),
                lambda c: outbox_store.release(
                    c,
                    unconfirmed_ids,
                    schema=self.schema,
                    token=self.token,
                    delay_seconds=self.config.unconfirmed_retry_seconds,
                ),
            ]
        )

    def _mark(
        self,
        conn: db.Connection,
        ids: list[int],
        *,
        keep: bool,
        rows: Sequence[ClaimedRow],
    ) -> None:
        outbox_store.mark_published(conn, ids, schema=self.schema, keep=keep)
        if rows:
            logger.debug(
                "published %d messages",
                len(rows),
                extra={
                    "action": "relay.published",
                    "message_ids": [r.message_id for r in rows],
                },
            )

    def _failure(self, row: ClaimedRow, outcome: amqp.Outcome) -> Failure:
        attempt = row.attempts + 1
        dead = self.retry_policy.exhausted(attempt)
        delay = 0.0 if dead else self.retry_policy.delay(attempt, self._rng)
        error = f"{outcome.status}: {outcome.reason}".strip()
        level = logger.error if dead else logger.warning
        level(
            "message %s to exchange %r routing key %r %s (attempt %d)%s",
            row.message_id,
            row.exchange,
            row.routing_key,
            error,
            attempt,
            "; now dead" if dead else f"; next try in {delay:.1f}s",
            extra={
                "action": "relay.dead" if dead else "relay.retry",
                "message_id": row.message_id,
                "exchange": row.exchange,
                "routing_key": row.routing_key,
                "attempt": attempt,
                "reason": outcome.status,
            },
        )
        return Failure(row.id, error, delay, dead)

    def _count(
        self,
        confirmed: Sequence[ClaimedRow],
        failures: Sequence[Failure],
        unconfirmed: Sequence[ClaimedRow],
        rows: Sequence[ClaimedRow],
        result: amqp.PublishResult,
    ) -> None:
        self.stats.published += len(confirmed)
        self.stats.failed += len(failures)
        self.stats.dead += sum(f.dead for f in failures)
        self.stats.unconfirmed += len(unconfirmed)
        per_exchange = Counter(r.exchange for r in confirmed)
        for exchange, n in per_exchange.items():
            self.metrics.outbox_published.labels(exchange=exchange).inc(n)
        for outcome in result.outcomes:
            if outcome.status != "confirmed":
                self.stats.by_reason[outcome.status] += 1
                self.metrics.outbox_failures.labels(reason=outcome.status).inc()
        if unconfirmed:
            logger.warning(
                "%d messages unconfirmed, sending again soon: %s",
                len(unconfirmed),
                next(
                    (o.reason for o in result.outcomes if o.status == "unconfirmed"),
                    "",
                ),
                extra={
                    "action": "relay.unconfirmed",
                    "message_ids": [r.message_id for r in unconfirmed],
                },
            )

    def _settle_all(self, actions: Sequence[Callable[[db.Connection], object]]) -> None:
        """Run settlements now, or keep them for after the reconnect if PostgreSQL is gone."""
        for i, action in enumerate(actions):
            try:
                action(self._require_conn())
            except errors.DatabaseError:
                self._unsettled.extend(actions[i:])
                raise

    def _require_conn(self) -> db.Connection:
        if self._conn is None or self._conn.closed:
            msg = "the relay has no database connection; reconnecting"
            raise errors.DatabaseError(msg)
        return self._conn

    # -- idle and housekeeping ---------------------------------------------------

    def _idle_wait(self) -> None:
        """Wait for a NOTIFY, the next due row, or the poll interval, whichever is first."""
        conn = self._require_conn()
        listener = self._listener
        if listener is not None and listener.wait(0.0):
            return  # rows committed while this batch was out
        due = outbox_store.next_due_seconds(conn, schema=self.schema)
        timeout = self.config.poll_interval_seconds
        if due is not None:
            timeout = min(timeout, max(due, 0.0))
        if timeout <= 0:
            return
        deadline = time.monotonic() + timeout
        while not self.stopping:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or listener is None:
                return
            if listener.wait(min(remaining, 0.5)):
                return
            # Serve broker heartbeats while idle.
            self._publisher.poll(0.001)
            if not self._publisher.is_open:
                self._publisher.connect()

    def _housekeeping(self) -> None:
        now = time.monotonic()
        conn = self._require_conn()
        if now >= self._next_status:
            self._next_status = now + self.config.status_interval_seconds
            self.refresh_gauges(conn)
        keep = self.config.keep_published_seconds
        if keep > 0 and now >= self._next_cleanup:
            self._next_cleanup = now + self.config.cleanup_interval_seconds
            deleted = outbox_store.purge(
                conn,
                schema=self.schema,
                what="published",
                older_than_seconds=keep,
                batch_size=self.config.cleanup_batch_size,
                max_batches=20,
            )
            if deleted:
                logger.info(
                    "deleted %d published rows past retention",
                    deleted,
                    extra={"action": "relay.retention", "deleted": deleted},
                )

    def refresh_gauges(self, conn: db.Connection) -> dict[str, float]:
        """Set the backlog, dead-row and oldest-age gauges from the table."""
        data = outbox_store.summary(conn, schema=self.schema)
        self.metrics.outbox_backlog.set(data["backlog"])
        self.metrics.outbox_dead.set(data["dead"])
        self.metrics.outbox_oldest_age.set(data["oldest_age_seconds"])
        return data
