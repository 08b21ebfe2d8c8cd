"""
The loop under every dead-letter operation: take the messages a queue held
when the run started, select them, hand the selected ones to a handler and
ack only what the handler says is safe. Everything else stays unacked and
goes back when the reader closes (see `reliable.amqp.QueueReader`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from reliable import amqp, errors
from reliable.dlq_filters import DeadLetter, Filter
from reliable.dlq_guard import DeliveryLimitGuard
from reliable.dlq_replay import RunReport

#: Given a batch of selected dead letters, returns ``(letter, outcome, ack)``.
Handler = Callable[[list[DeadLetter]], list[tuple[DeadLetter, str, bool]]]


@dataclass(slots=True, kw_only=True)
class Scan:
    """One pass over a queue; `run` does the work."""

    queue: str
    flt: Filter
    report: RunReport
    handle: Handler
    #: Fills exception types from failure records (or does nothing).
    attach: Callable[[Sequence[DeadLetter]], None]
    size: int
    now: datetime
    guard: DeliveryLimitGuard | None = None
    stop: Callable[[], bool] | None = None
    progress: Callable[[int], None] | None = None
    before_batch: Callable[[int], None] | None = None
    scan_limit: int | None = None

    def run(self, amqp_url: str) -> None:
        selected = 0
        # Twice the batch in prefetch: the next batch is already on its way
        # while this one waits for its confirms.
        with amqp.QueueReader(amqp_url, self.queue, prefetch=2 * self.size) as reader:
            budget = _budget(reader, self.queue, self.scan_limit)
            taken = 0
            while taken < budget and (
                self.flt.limit is None or selected < self.flt.limit
            ):
                if self.stop is not None and self.stop():
                    self.report.interrupted = True
                    break
                want = min(self.size, budget - taken)
                if self.before_batch is not None:
                    self.before_batch(want)
                messages = reader.take(want)
                if not messages:
                    break
                taken += len(messages)
                letters = [
                    DeadLetter.from_message(m, dead_letter_queue=self.queue)
                    for m in messages
                ]
                self.attach(letters)
                chosen = _select(
                    letters, self.flt, self.now, room=_room(self.flt, selected)
                )
                selected += len(chosen)
                self.report.tally.add("scanned", len(letters))
                self.report.tally.add("not_selected", len(letters) - len(chosen))
                self.report.tally.add("selected", len(chosen))
                results = self.handle(chosen) if chosen else []
                acked = {x.message.delivery_tag for x, _o, ack in results if ack}
                reader.ack(sorted(acked))
                for _letter, outcome, _ack in results:
                    self.report.tally.add(outcome)
                if self.guard is not None:
                    held = [x for x in letters if x.message.delivery_tag not in acked]
                    refreshed, failed = self.guard.protect(held, reader)
                    self.report.tally.add("refreshed", refreshed)
                    self.report.tally.add("refresh_failed", failed)
                if self.progress is not None:
                    self.progress(len(letters))


def _budget(reader: amqp.QueueReader, queue: str, scan_limit: int | None) -> int:
    """
    How many messages a run looks at: those ready when it starts.

    Messages arriving later (a replayed message that dies again during the
    run, say) wait for the next run instead of being replayed twice in one.
    """
    try:
        ready = reader.state().message_count
    except errors.BrokerRefused as exc:
        if exc.reply_code == 404:
            raise errors.QueueNotFound(queue=queue) from None
        raise
    return ready if scan_limit is None else min(ready, scan_limit)


def _room(flt: Filter, selected: int) -> int | None:
    return None if flt.limit is None else flt.limit - selected


def _select(
    letters: Sequence[DeadLetter], flt: Filter, now: datetime, *, room: int | None
) -> list[DeadLetter]:
    chosen = [x for x in letters if flt.matches(x, now)]
    return chosen if room is None else chosen[: max(room, 0)]
