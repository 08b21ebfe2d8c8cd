"""
Export dead letters to JSON Lines and import (replay) them from such a file.

One line per message::

    {"format": "reliable-dlq/1", "queue": "orders.dlq", "exchange": "dlx",
     "routing_key": "orders", "redelivered": false,
     "properties": {"content_type": "application/json", ...},
     "headers": {"t": "table", "v": {...}},
     "body": {"encoding": "base64", "data": "..."}}

Bodies are always base64 (``encoding`` says so), so any bytes survive.
Header values carry their type (`reliable.dlq_headers.encode_value`), so an
import hands pika the same Python types, hence the same AMQP field types, as
the export read. ``export --remove`` acks a batch only after its lines are
written and fsynced.
"""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from reliable import amqp, errors
from reliable.dlq import DeadLetters, RunReport, Target, TokenBucket
from reliable.dlq_filters import DeadLetter, Filter
from reliable.dlq_headers import decode_value, encode_value, replay_headers

FORMAT = "reliable-dlq/1"
_PROPERTY_NAMES = (
    "content_type",
    "content_encoding",
    "delivery_mode",
    "priority",
    "correlation_id",
    "reply_to",
    "expiration",
    "message_id",
    "timestamp",
    "type",
    "user_id",
    "app_id",
    "cluster_id",
)


def encode_record(message: amqp.IncomingMessage, *, queue: str) -> dict[str, Any]:
    props = message.properties
    return {
        "format": FORMAT,
        "queue": queue,
        "exchange": message.exchange,
        "routing_key": message.routing_key,
        "redelivered": message.redelivered,
        "properties": {
            k: getattr(props, k)
            for k in _PROPERTY_NAMES
            if getattr(props, k) is not None
        },
        "headers": encode_value(dict(props.headers))
        if props.headers is not None
        else None,
        "body": {
            "encoding": "base64",
            "data": base64.b64encode(message.body).decode("ascii"),
        },
    }


def decode_record(data: Any, *, tag: int = 0) -> amqp.IncomingMessage:
    """
    Turn an exported line back into a message.

    Raises:
        ValueError: The line is not a record of this format.
    """
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        msg = f"not a {FORMAT} record"
        raise ValueError(msg)
    body = data.get("body") or {}
    if body.get("encoding") == "base64":
        raw = base64.b64decode(str(body.get("data", "")), validate=True)
    elif body.get("encoding") == "utf-8":
        raw = str(body.get("data", "")).encode("utf-8")
    else:
        msg = f"unknown body encoding {body.get('encoding')!r}"
        raise ValueError(msg)
    props = {
        k: v for k, v in (data.get("properties") or {}).items() if k in _PROPERTY_NAMES
    }
    headers = decode_value(data["headers"]) if data.get("headers") is not None else None
    if headers is not None and not isinstance(headers, dict):
        msg = "headers must be a table"
        raise ValueError(msg)
    props.setdefault("delivery_mode", None)
    return amqp.IncomingMessage(
        delivery_tag=tag,
        redelivered=bool(data.get("redelivered")),
        exchange=str(data.get("exchange", "")),
        routing_key=str(data.get("routing_key", "")),
        body=raw,
        properties=amqp.Properties(headers=headers, **props),
    )


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on directories
    finally:
        os.close(fd)


def export(
    letters: DeadLetters,
    queue: str,
    path: Path,
    flt: Filter | None = None,
    *,
    remove: bool = False,
    stop: Callable[[], bool] | None = None,
    progress: Callable[[int], None] | None = None,
) -> RunReport:
    """
    Write matching dead letters of *queue* to *path* (JSON Lines).

    With *remove*, each batch is acked only after its lines are flushed and
    fsynced, so a crash leaves every message in the queue, the file, or both.

    Raises:
        reliable.errors.QueueNotFound: *queue* is missing.
        reliable.errors.ReliableError: *path* cannot be written.
    """
    flt = flt or Filter()
    started_at = datetime.now(UTC)
    report = RunReport(
        "export", queue, str(path.name), False, flt.to_json(), started_at
    )
    letters.check_queue(queue)
    try:
        handle_file: IO[str] = path.open("w", encoding="utf-8")
    except OSError as exc:
        msg = f"cannot write {str(path)!r} ({exc.strerror}); check the directory and permissions"
        raise errors.ReliableError(msg) from None
    t0 = time.monotonic()
    with handle_file:

        def handle(batch: list[DeadLetter]) -> list[tuple[DeadLetter, str, bool]]:
            for x in batch:
                handle_file.write(
                    json.dumps(encode_record(x.message, queue=queue)) + "\n"
                )
            handle_file.flush()
            os.fsync(handle_file.fileno())
            return [(x, "exported", remove) for x in batch]

        letters._scan(queue, flt, report, handle, stop=stop, progress=progress)
    _fsync_dir(path)
    if remove:
        report.tally.add("removed", report.tally.counts.get("exported", 0))
    return letters._finish(report, t0)


def read_records(
    path: Path,
) -> Iterator[tuple[int, str, amqp.IncomingMessage | None, str]]:
    """``(line_number, raw_line, message or None, problem)`` for each non-empty line."""
    try:
        stream = path.open(encoding="utf-8")
    except OSError as exc:
        msg = f"cannot read {str(path)!r} ({exc.strerror}); check the path"
        raise errors.DecodeError(msg, reason="unreadable") from None
    with stream:
        for number, line in enumerate(stream, start=1):
            if not line.strip():
                continue
            try:
                yield number, line, decode_record(json.loads(line), tag=number), ""
            except (ValueError, KeyError, TypeError) as exc:
                yield number, line, None, f"line {number}: {exc}"


def import_file(
    letters: DeadLetters,
    path: Path,
    flt: Filter | None = None,
    *,
    target: Target | None = None,
    rate: float | None = None,
    dry_run: bool = False,
    stop: Callable[[], bool] | None = None,
    progress: Callable[[int], None] | None = None,
) -> RunReport:
    """
    Replay the messages of an export file with confirms (origin from their headers, or *target*).

    Lines that could not be published (returned, nacked, unknown origin,
    unreadable) are written to ``<file>.failed.jsonl`` so they can be imported
    again once fixed.
    """
    flt = flt or Filter()
    target = target or Target()
    t0 = time.monotonic()
    report = RunReport(
        "import",
        path.name,
        target.describe(),
        dry_run,
        flt.to_json(),
        datetime.now(UTC),
    )
    if target.queue is not None or target.exchange is not None:
        letters._check_target(target)
    else:
        letters.check_broker()
    publisher = amqp.ConfirmingPublisher(letters.amqp_url, window=letters.batch_size)
    bucket = TokenBucket(rate, burst=max(1.0, rate / 20)) if rate else None
    failed_path = path.with_name(path.name + ".failed.jsonl")
    failed: list[str] = []
    existing: dict[str, bool] = {}
    now = datetime.now(UTC)
    replayed_at = now
    batch: list[tuple[str, DeadLetter, amqp.OutgoingMessage]] = []

    def flush() -> None:
        if not batch:
            return
        if bucket is not None:
            wait = bucket.wait_seconds(len(batch))
            while wait > 0:
                time.sleep(min(wait, 0.05))
                wait = bucket.wait_seconds(len(batch))
            bucket.take(len(batch))
        outcome = publisher.publish_batch(
            [c for _l, _x, c in batch], timeout_seconds=letters.confirm_timeout_seconds
        )
        for (line, letter, _c), result in zip(batch, outcome.outcomes, strict=True):
            if result.status == "confirmed":
                report.tally.add("replayed")
            else:
                report.tally.add(
                    result.status, 1, f"{letter.message.delivery_tag}: {result.reason}"
                )
                failed.append(line)
        if progress is not None:
            progress(len(batch))
        batch.clear()

    try:
        for number, line, message, problem in read_records(path):
            if stop is not None and stop():
                report.interrupted = True
                break
            report.tally.add("scanned")
            if message is None:
                report.tally.add("unreadable", 1, problem)
                failed.append(line)
                continue
            letter = DeadLetter.from_message(message)
            if not flt.matches(letter, now):
                report.tally.add("not_selected")
                continue
            report.tally.add("selected")
            if target.exchange is not None:
                exchange, key = target.exchange, target.routing_key
            else:
                exchange, key = "", target.queue or letter.origin.queue or ""
            if not key and exchange == "":
                report.tally.add(
                    "unknown_origin", 1, f"line {number}: no x-death and no --to"
                )
                failed.append(line)
                continue
            if exchange == "" and key not in existing:
                existing[key] = letters.queue_exists(key)
            if exchange == "" and not existing[key]:
                report.tally.add(
                    "origin_missing", 1, f"line {number}: queue {key!r} does not exist"
                )
                failed.append(line)
                continue
            report.plan.append(
                {
                    "id": f"line {number}",
                    "from": letter.origin.queue,
                    "to": key if exchange == "" else f"{exchange}:{key}",
                    "action": "replay",
                }
            )
            if dry_run:
                report.tally.add("would_replay")
                continue
            headers = replay_headers(
                message.properties.headers,
                origin_queue=letter.origin.queue,
                replayed_at=replayed_at,
            )
            copy = amqp.OutgoingMessage(
                exchange=exchange,
                routing_key=key,
                body=message.body,
                properties=replace(message.properties, headers=headers or None),
            )
            batch.append((line, letter, copy))
            if len(batch) >= letters.batch_size:
                flush()
        flush()
    finally:
        publisher.close()
    if failed and not dry_run:
        with failed_path.open("w", encoding="utf-8") as out:
            out.writelines(
                line if line.endswith("\n") else line + "\n" for line in failed
            )
        report.warnings.append(
            f"{len(failed)} line(s) not replayed were written to {failed_path.name}"
        )
    return letters._finish(report, t0)
