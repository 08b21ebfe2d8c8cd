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
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from reliable import amqp, errors
from reliable.dlq import DeadLetters
from reliable.dlq_filters import DeadLetter, Filter
from reliable.dlq_headers import decode_value, encode_value
from reliable.dlq_replay import (
    ReplayRun,
    RunReport,
    Target,
    TokenBucket,
    batch_size_for,
)

FORMAT = "reliable-dlq/1"
_PROPERTY_NAMES = amqp.BASIC_PROPERTY_NAMES


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
        # Never overwrite: an earlier export may hold messages it removed.
        handle_file: IO[str] = path.open("x", encoding="utf-8")
    except FileExistsError:
        msg = f"{str(path)!r} already exists; export to a new file (it may hold removed messages)"
        raise errors.ReliableError(msg) from None
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

    The same rules as `DeadLetters.replay` apply (origin from ``x-death`` or
    ``x-reliable-origin-queue``, history and replay-count headers), except the
    replay cap: importing a file is an explicit decision. Lines that were not
    published (returned, nacked, unknown origin, unreadable) are written to
    ``<file>.failed.jsonl`` to be imported again once fixed.
    """
    flt = flt or Filter()
    target = target or Target()
    t0 = time.monotonic()
    now = datetime.now(UTC)
    report = RunReport(
        "import", path.name, target.describe(), dry_run, flt.to_json(), now
    )
    if target.is_origin:
        letters.check_broker()
    else:
        letters._check_target(target)
    size = batch_size_for(rate, letters.batch_size)
    bucket = TokenBucket(rate, burst=rate) if rate and not dry_run else None
    publisher = amqp.ConfirmingPublisher(letters.amqp_url, window=size)
    existing: dict[str, bool] = {}

    def queue_exists(name: str) -> bool:
        if name not in existing:
            existing[name] = letters.queue_exists(name)
        return existing[name]

    run = ReplayRun(
        queue="",
        target=target,
        report=report,
        publisher=publisher,
        queue_exists=queue_exists,
        declare_parking_lot=lambda _name: None,
        parking_lot="",
        max_replays=sys.maxsize,
        dry_run=dry_run,
        move=False,
        confirm_timeout_seconds=letters.confirm_timeout_seconds,
    )
    failed: list[str] = []
    try:
        for batch in _batches(path, flt, now, report, size, stop, failed):
            if bucket is not None:
                bucket.acquire(len(batch), idle=publisher.poll)
            lines = {x.message.delivery_tag: line for x, line in batch}
            for letter, outcome, ok in run.handle([x for x, _line in batch]):
                report.tally.add(outcome)
                if not ok and not dry_run:
                    failed.append(lines[letter.message.delivery_tag])
            if progress is not None:
                progress(len(batch))
    finally:
        publisher.close()
    if failed:
        _write_failed(path, failed, report)
    return letters._finish(report, t0)


def _batches(
    path: Path,
    flt: Filter,
    now: datetime,
    report: RunReport,
    size: int,
    stop: Callable[[], bool] | None,
    failed: list[str],
) -> Iterator[list[tuple[DeadLetter, str]]]:
    """Selected records of *path* in batches of *size*; unreadable lines go to *failed*."""
    batch: list[tuple[DeadLetter, str]] = []
    selected = 0
    for _number, line, message, problem in read_records(path):
        if flt.limit is not None and selected >= flt.limit:
            break
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
        selected += 1
        batch.append((letter, line))
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _write_failed(path: Path, failed: list[str], report: RunReport) -> None:
    failed_path = path.with_name(path.name + ".failed.jsonl")
    with failed_path.open("w", encoding="utf-8") as out:
        out.writelines(x if x.endswith("\n") else x + "\n" for x in failed)
    report.warnings.append(
        f"{len(failed)} line(s) not replayed were written to {failed_path.name}"
    )
