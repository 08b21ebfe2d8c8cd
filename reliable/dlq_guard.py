"""
Keep a look at a quorum dead-letter queue from dead-lettering its messages.

Holding a message unacked and letting it go back (what `dlq show`, dry runs
and non-selected messages of a replay do) counts as a delivery on a quorum
queue: ``x-delivery-count`` goes up by one per look. With a delivery limit on
the DLQ (``x-delivery-limit``, a ``delivery-limit`` policy, or 20 by default
from RabbitMQ 4.0) enough looks would dead-letter the message again, or drop
it when the DLQ has no dead-letter exchange of its own. Before such a message
is released for the last time it can be, it is *refreshed*: a copy (same
body, properties and headers, without the per-queue ``x-delivery-count``) is
published to the same queue with a confirm, and only then is the original
acked. The copy starts with a fresh count, at the back of the queue: the
queue keeps the same messages, and only refreshed ones change position.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from reliable import amqp
from reliable.dlq_filters import DeadLetter
from reliable.dlq_headers import as_int
from reliable.dlq_replay import copy_of

logger = logging.getLogger(__name__)

_PER_QUEUE = ("x-delivery-count", "x-acquired-count")


def delivery_count(letter: DeadLetter) -> int:
    """Returns so far (3.12+ omits the header before the first return)."""
    return as_int(letter.headers.get("x-delivery-count")) or 0


class DeliveryLimitGuard:
    """Refreshes held messages that one more release would push to the delivery limit."""

    def __init__(
        self,
        amqp_url: str,
        queue: str,
        *,
        limit: int,
        confirm_timeout_seconds: float = 30.0,
    ) -> None:
        self.queue = queue
        self.limit = limit
        self._url = amqp_url
        self._timeout = confirm_timeout_seconds
        self._publisher: amqp.ConfirmingPublisher | None = None

    def at_risk(self, letter: DeadLetter) -> bool:
        # The broker dead-letters on a return that makes the count exceed
        # the limit; refresh while one more return is still safe.
        return delivery_count(letter) + 1 >= self.limit

    def protect(
        self, held: Sequence[DeadLetter], reader: amqp.QueueReader
    ) -> tuple[int, int]:
        """Refresh the held messages at risk; ``(refreshed, failed)``."""
        risky = [x for x in held if self.at_risk(x)]
        if not risky:
            return 0, 0
        if self._publisher is None:
            self._publisher = amqp.ConfirmingPublisher(
                self._url, window=max(len(risky), 1)
            )
        copies = [
            copy_of(
                x,
                "",
                self.queue,
                {k: v for k, v in x.headers.items() if k not in _PER_QUEUE},
            )
            for x in risky
        ]
        result = self._publisher.publish_batch(copies, timeout_seconds=self._timeout)
        done = [
            x.message.delivery_tag
            for x, o in zip(risky, result.outcomes, strict=True)
            if o.status == "confirmed"
        ]
        reader.ack(done)
        failed = len(risky) - len(done)
        if failed:
            logger.warning(
                "%d message(s) near the delivery limit of %r could not be refreshed",
                failed,
                self.queue,
            )
        return len(done), failed

    def close(self) -> None:
        if self._publisher is not None:
            self._publisher.close()
            self._publisher = None
