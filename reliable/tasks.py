"""
The Celery integration: the only module that imports celery and kombu.

Sections (kept apart so they can be merged independently):

* effectively-once tasks: `ReliableTask` and `make_task`, behind
  ``@rel.task(...)``;
* outbox enqueue: `enqueue` stores exactly the message ``apply_async``
  would publish, behind ``rel.outbox.enqueue(conn, signature)``;
* beat: `ReliableScheduler` gives each schedule slot a deterministic task id;
* topology: `celery_queues` turns a topology into kombu queues for
  ``task_queues``.

The plain-Python parts live in `reliable.taskrun` (one execution in one
transaction) and `reliable.task_support` (settings, message conversion, slot
ids), so this module holds only what touches Celery or kombu.
"""

from __future__ import annotations

import copy
import functools
import inspect
import logging
import traceback as tb
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import celery
import celery.beat
import celery.exceptions
import celery.schedules
import celery.signals
from kombu import Connection as KombuConnection
from kombu import Exchange as KombuExchange
from kombu import Queue as KombuQueue
from kombu.transport import base as kombu_base

from reliable import db, errors, taskrun
from reliable.inbox import DEFAULT_RESULT_MAX_BYTES
from reliable.task_support import (
    REQUIRED_TASK_SETTINGS,
    beat_task_id,
    check_settings,
    outbox_message,
    queue_name,
)

if TYPE_CHECKING:
    from reliable.app import Reliable
    from reliable.outbox import Outbox
    from reliable.topology import Topology

logger = logging.getLogger(__name__)


# =====================================================================================
# Effectively-once tasks
# =====================================================================================

#: Options of `make_task` that are ours, not Celery's.
_OWN_OPTIONS = frozenset({"consumer", "dedupe_key", "result_max_bytes"})


class ReliableTask(celery.Task):  # type: ignore[type-arg]  # args/return vary per task
    """
    Base class of ``@rel.task`` tasks: inbox claim and body in one transaction.

    .. versionadded:: 0.1.0
    """

    acks_late = True
    acks_on_failure_or_timeout = False
    acks_on_failure = False
    acks_on_timeout = False
    reject_on_worker_lost = True

    #: Set by `make_task`.
    reliable_spec: taskrun.TaskSpec
    reliable_app: Reliable

    def on_failure(
        self, exc: Exception, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        """Record the final failure (retries exhausted or not retryable) in its own transaction."""
        super().on_failure(exc, task_id, args, kwargs, einfo)
        record_failure(self, exc, task_id, einfo)


def record_failure(
    task: ReliableTask, exc: BaseException, task_id: str, einfo: Any
) -> None:
    """Insert a ``reliable_task_failures`` row; never raises (the message is rejected anyway)."""
    rel = task.reliable_app
    request = task.request
    delivery = getattr(request, "delivery_info", None) or {}
    text = getattr(einfo, "traceback", None) or "".join(
        tb.format_exception(type(exc), exc, exc.__traceback__)
    )
    try:
        conn = rel.task_connections.get()
        db.ensure_idle(conn)
        with conn.transaction():
            rel.inbox.record_failure(
                conn,
                consumer=task.reliable_spec.consumer,
                task_name=task.name,
                task_id=task_id,
                queue=queue_name(delivery.get("routing_key")),
                exception_type=f"{type(exc).__module__}.{type(exc).__qualname__}",
                exception_message=str(exc)[:4000],
                traceback=text[-16000:] if text else None,
                attempts=int(getattr(request, "retries", 0) or 0) + 1,
            )
    except Exception:
        logger.exception(
            "could not record the failure of task %s[%s]",
            task.name,
            task_id,
            extra={"action": "task_failure_not_recorded", "task_id": task_id},
        )


def _body_signature(body: Callable[..., Any], *, bind: bool) -> inspect.Signature:
    """The signature Celery should check calls against: the body's, minus the connection."""
    params = list(inspect.signature(body).parameters.values())
    position = 1 if bind else 0
    if len(params) <= position or params[position].kind not in (
        inspect.Parameter.POSITIONAL_ONLY,
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
    ):
        where = "second (after the task)" if bind else "first"
        msg = (
            f"task body {body.__qualname__!r} needs the connection as its {where} "
            "positional parameter; define it as def task(conn, ...)"
        )
        raise TypeError(msg)
    del params[position]
    if not bind:
        params.insert(
            0, inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)
        )
    return inspect.Signature(params)


def make_task(rel: Reliable, body: Callable[..., Any], options: dict[str, Any]) -> Any:
    """
    Register *body* as an effectively-once Celery task of ``rel.celery_app``.

    *options* are Celery task options plus ``consumer``, ``dedupe_key`` and
    ``result_max_bytes``. Returns the Celery task (a `ReliableTask`).
    """
    app = rel.celery_app
    if app is None:
        msg = (
            "Reliable has no celery_app; pass Reliable(celery_app=app) to use rel.task"
        )
        raise errors.ConfigError(msg, key="celery_app")
    celery_options = {k: v for k, v in options.items() if k not in _OWN_OPTIONS}
    for name, required in REQUIRED_TASK_SETTINGS.items():
        given = celery_options.get(name, required)
        if given != required:
            msg = (
                f"rel.task needs {name}={required!r}, got {given!r}; "
                "drop the option (effectively-once tasks depend on it)"
            )
            raise ValueError(msg)
    bind = bool(celery_options.pop("bind", False))
    base = celery_options.pop("base", ReliableTask)
    if not (isinstance(base, type) and issubclass(base, ReliableTask)):
        msg = f"base must be a subclass of reliable.tasks.ReliableTask, got {base!r}"
        raise TypeError(msg)
    max_bytes = int(options.get("result_max_bytes", DEFAULT_RESULT_MAX_BYTES))
    dedupe_key = options.get("dedupe_key")
    if dedupe_key is not None and not callable(dedupe_key):
        msg = f"dedupe_key must be a callable taking the task's arguments, got {dedupe_key!r}"
        raise TypeError(msg)
    signature = _body_signature(body, bind=bind)
    holder: dict[str, taskrun.TaskSpec] = {}

    @functools.wraps(body)
    def run(self: ReliableTask, *args: Any, **kwargs: Any) -> Any:
        spec = holder["spec"]
        try:
            outcome = taskrun.execute(
                spec=spec,
                inbox=rel.inbox,
                connections=rel.task_connections,
                task_id=str(self.request.id or ""),
                body=body,
                args=args,
                kwargs=kwargs,
                leading=(self,) if bind else (),
            )
        except celery.exceptions.Retry:
            raise
        except BaseException as exc:
            rel.metrics.inbox_failures.labels(
                consumer=spec.consumer, exception=type(exc).__name__
            ).inc()
            raise
        if outcome.duplicate:
            rel.metrics.inbox_duplicates.labels(consumer=spec.consumer).inc()
        else:
            rel.metrics.inbox_processed.labels(consumer=spec.consumer).inc()
        return outcome.result

    # Celery checks call arguments against this (typing=True), so callers see
    # the body's parameters without the connection.
    run.__signature__ = signature  # type: ignore[attr-defined]
    task = app.task(bind=True, base=base, **celery_options)(run)
    spec = taskrun.TaskSpec(
        consumer=str(options.get("consumer") or task.name),
        dedupe_key=dedupe_key,
        result_max_bytes=max_bytes,
    )
    holder["spec"] = spec
    task.reliable_spec = spec
    task.reliable_app = rel
    return task


def connect_startup_check(rel: Reliable) -> None:
    """Log `check_settings` problems when a worker of ``rel.celery_app`` starts."""

    def on_worker_init(sender: Any = None, **_kwargs: Any) -> None:
        app = getattr(sender, "app", None)
        if app is not rel.celery_app:
            return
        tasks = [t for t in app.tasks.values() if isinstance(t, ReliableTask)]
        for problem in check_settings(app, tasks):
            logger.warning(problem, extra={"action": "task_settings_warning"})

    celery.signals.worker_init.connect(
        on_worker_init, weak=False, dispatch_uid=f"reliable-check-{id(rel)}"
    )


# =====================================================================================
# Outbox enqueue: Celery builds the message, the outbox stores it
# =====================================================================================


class _CaptureChannel:
    """A kombu channel that records publishes instead of sending them."""

    def __init__(self, sink: list[dict[str, Any]]) -> None:
        self._sink = sink
        self.connection: Any = None

    def prepare_message(
        self,
        body: Any,
        priority: int | None = None,
        content_type: str | None = None,
        content_encoding: str | None = None,
        headers: dict[str, Any] | None = None,
        properties: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        # pyamqp's prepare_message, minus the amqp.Message object.
        props = dict(properties or {})
        props.pop("delivery_info", None)
        props["priority"] = priority or 0
        return {
            "body": body,
            "content_type": content_type,
            "content_encoding": content_encoding,
            "headers": dict(headers or {}),
            "properties": props,
        }

    def basic_publish(
        self,
        message: dict[str, Any],
        exchange: str = "",
        routing_key: str = "",
        **_kw: Any,
    ) -> None:
        self._sink.append({**message, "exchange": exchange, "routing_key": routing_key})

    # Celery asks the producer to declare the target queue; the outbox does not
    # declare (the relay publishes with mandatory, so a missing queue shows up
    # as a returned row rather than a silent drop).
    def prepare_queue_arguments(self, arguments: Any, **_kw: Any) -> Any:
        return arguments

    def exchange_declare(self, *_a: Any, **_kw: Any) -> None:
        return None

    def queue_declare(self, *_a: Any, **_kw: Any) -> None:
        return None

    def queue_bind(self, *_a: Any, **_kw: Any) -> None:
        return None

    def close(self) -> None:
        return None


class _CaptureTransport(kombu_base.Transport):
    """A kombu transport whose channels capture messages; it never opens a socket."""

    driver_type = "reliable-outbox"
    driver_name = "reliable-outbox"

    def establish_connection(self) -> Any:
        return self

    def close_connection(self, connection: Any) -> None:
        return None

    def create_channel(self, connection: Any) -> Any:
        channel = _CaptureChannel(getattr(self.client, "captured", []))
        channel.connection = self
        return channel

    def drain_events(self, connection: Any, **kwargs: Any) -> None:
        msg = "the outbox capture transport cannot consume"
        raise NotImplementedError(msg)


class _CaptureConnection(KombuConnection):
    def __init__(self) -> None:
        super().__init__(transport=_CaptureTransport)
        self.captured: list[dict[str, Any]] = []


def capture(
    signature: Any, *, task_id: str | None = None
) -> tuple[str, list[dict[str, Any]]]:
    """
    Run Celery's own send path for *signature* and return ``(result id, messages)``.

    ``apply_async(connection=...)`` makes Celery publish through a producer on
    the given connection; a capture transport records each message (routing,
    protocol 2 headers, serialized body, properties) instead of sending it.
    Canvas works as with ``apply_async``: a chain yields its first task's
    message, a group one message per task.
    """
    app = signature.app
    if app.conf.task_always_eager:
        msg = (
            "task_always_eager=True would run the task now instead of storing it; "
            "disable eager mode to enqueue through the outbox"
        )
        raise errors.ConfigError(msg, key="task_always_eager")
    connection = _CaptureConnection()
    options: dict[str, Any] = {"connection": connection}
    if task_id is not None:
        options["task_id"] = task_id
    try:
        result = signature.apply_async(**options)
    finally:
        connection.release()
    return str(result.id), connection.captured


def enqueue(
    outbox: Outbox, conn: db.Connection, signature: Any, *, task_id: str | None = None
) -> str:
    """Store the message(s) ``signature.apply_async()`` would publish; see `Outbox.enqueue`."""
    result_id, messages = capture(signature, task_id=task_id)
    if not messages:
        msg = f"celery published nothing for {signature!r}; chords need a result backend, other canvas types are supported"
        raise ValueError(msg)
    now = datetime.now(UTC)
    for captured in messages:
        outbox.add(conn, outbox_message(captured, now=now))
    return result_id


# =====================================================================================
# Beat: one task id per schedule slot
# =====================================================================================


def slot_seconds(schedule: Any) -> float:
    """The width of one schedule slot: the interval, or one minute for crontab/solar."""
    if isinstance(schedule, celery.schedules.schedule) and not isinstance(
        schedule, celery.schedules.crontab | celery.schedules.solar
    ):
        every = getattr(schedule, "run_every", None)
        if every is not None:
            return max(1.0, float(every.total_seconds()))
    return 60.0


class ReliableScheduler(celery.beat.PersistentScheduler):
    """
    Celery beat scheduler that sends each run with a per-slot deterministic task id.

    Run beat with ``celery -A proj beat -S reliable.tasks:ReliableScheduler``.
    Two beats running by mistake then send the same task id for the same
    slot; an ``@rel.task`` executes it once and skips the copy.

    .. versionadded:: 0.1.0
    """

    def apply_async(
        self, entry: Any, producer: Any = None, advance: bool = True, **kwargs: Any
    ) -> Any:
        when = self.app.now()
        task_id = beat_task_id(entry.name, when, slot_seconds(entry.schedule))
        entry = self.reserve(entry) if advance else entry
        # A copy carries the id: the stored entry must not, or every later
        # run would reuse it.
        tagged = copy.copy(entry)
        tagged.options = {**entry.options, "task_id": task_id}
        logger.debug(
            "beat sends %s with task id %s",
            entry.name,
            task_id,
            extra={"action": "beat_slot", "task_id": task_id},
        )
        return super().apply_async(tagged, producer, advance=False, **kwargs)


# =====================================================================================
# Topology
# =====================================================================================


def celery_queues(topology: Topology) -> list[KombuQueue]:
    """
    Return kombu queues that declare exactly what ``reliable topology apply`` declared.

    Use them as Celery's ``task_queues``. Each queue carries the same
    ``queue_arguments`` as the topology (``x-queue-type`` included, so Celery's
    quorum-queue detection turns global QoS off and the broker does not close
    the connection with 540), so a worker's redeclaration is equivalent and
    never meets ``406 PRECONDITION_FAILED``.

    A queue's first binding from an exchange becomes its kombu exchange and
    routing key (what Celery publishes with); the exchange is marked
    ``no_declare`` because ``apply`` owns it. A queue without bindings gets
    the default exchange, for which Celery substitutes its own default exchange
    (``task_default_exchange``, ``celery``) and binds the queue to it.

    .. versionadded:: 0.1.0
    """
    exchanges = {e.name: e for e in topology.exchanges}
    out = []
    for queue in topology.queues:
        binding = next(
            (
                b
                for b in topology.bindings
                if b.destination_type == "queue" and b.destination == queue.name
            ),
            None,
        )
        if binding is None:
            exchange = KombuExchange("", type="direct", no_declare=True)
            routing_key = queue.name
        else:
            declared = exchanges.get(binding.source)
            exchange = KombuExchange(
                binding.source,
                type=declared.type if declared else _builtin_type(binding.source),
                durable=declared.durable if declared else True,
                auto_delete=declared.auto_delete if declared else False,
                arguments=declared.declare_arguments() if declared else None,
                no_declare=True,
            )
            routing_key = binding.routing_key
        out.append(
            KombuQueue(
                queue.name,
                exchange=exchange,
                routing_key=routing_key,
                durable=queue.durable,
                exclusive=queue.exclusive,
                auto_delete=queue.auto_delete,
                queue_arguments=queue.declare_arguments(),
                binding_arguments=dict(binding.arguments) if binding else None,
            )
        )
    return out


def _builtin_type(name: str) -> str:
    # amq.topic, amq.fanout, amq.headers, amq.match (headers), amq.direct.
    kind = name.removeprefix("amq.")
    return {"match": "headers"}.get(
        kind, kind if kind in ("topic", "fanout", "headers") else "direct"
    )
