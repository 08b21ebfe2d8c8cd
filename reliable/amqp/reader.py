"""
`QueueReader`: read a queue without losing its order, for the DLQ tooling.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Sequence
from typing import Any

import pika
import pika.compat
import pika.exceptions
import pika.spec

from reliable import errors
from reliable.amqp.connection import connection_error, connection_parameters, refused
from reliable.amqp.messages import IncomingMessage, Properties, QueueState

logger = logging.getLogger(__name__)


class QueueReader:
    """
    Take messages from one queue and hold them unacknowledged until told otherwise.

    Built for tools that look at a queue without consuming it: whatever is not
    acked goes back when the reader closes. Closing the channel (rather than
    ``basic.nack(requeue=True)``) matters: a classic queue puts returned messages
    back at their old positions, and a quorum queue puts channel-close returns
    at the front in order, while a nack-requeue on a quorum queue (3.10+, no
    delivery limit) appends them at the back. Quorum queues count each return
    in ``x-delivery-count``.

    Held messages use up a consumer's prefetch. When every slot is held the
    reader opens another channel with a consumer of its own rather than
    cancelling the first: a quorum queue returned the messages of several
    consumers on one channel in no fixed order when that channel closed
    (seen on 3.10.8). On close the reader stops every consumer, then closes
    the channels oldest first, waiting until each one's messages are back,
    so they return in the order they were taken. Delivery tags handed out
    are the reader's own (channels number their deliveries separately).
    """

    def __init__(
        self,
        url: str,
        queue: str,
        *,
        prefetch: int = 500,
        connect_timeout_seconds: float = 10.0,
    ) -> None:
        if prefetch < 1:
            msg = f"prefetch must be at least 1, got {prefetch}"
            raise ValueError(msg)
        self._url = url
        self._queue = queue
        self._prefetch = prefetch
        self._timeout = connect_timeout_seconds
        self._connection: Any = None
        #: Consuming channels, oldest first, with consumer tag and unacked broker tags.
        self._channels: list[tuple[Any, str, set[int]]] = []
        #: Our tag -> (channel index, broker tag).
        self._tags: dict[int, tuple[int, int]] = {}
        self._buffer: list[IncomingMessage] = []
        self._seq = 0

    def __enter__(self) -> QueueReader:
        self.open()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    @property
    def outstanding(self) -> int:
        """Messages received and neither acked nor released."""
        return len(self._tags)

    def open(self) -> QueueState:
        """
        Connect and check that the queue exists; nothing is taken yet.

        Raises:
            reliable.errors.BrokerConnectionError: RabbitMQ cannot be reached.
            reliable.errors.BrokerRefused: The queue does not exist (404).
        """
        params = connection_parameters(self._url, connect_timeout_seconds=self._timeout)
        try:
            self._connection = pika.BlockingConnection(params)
        except Exception as exc:
            self.close()
            raise connection_error(exc, self._url) from None
        return self.state()

    def state(self) -> QueueState:
        """The queue's ready count, read by a passive declare on a side channel."""
        try:
            side = self._connection.channel()
            try:
                frame = side.queue_declare(self._queue, passive=True)
            finally:
                with contextlib.suppress(Exception):
                    if side.is_open:
                        side.close()
        except pika.exceptions.ChannelClosedByBroker as exc:
            what = f"check queue {self._queue!r}"
            raise refused(what, exc) from None
        except pika.exceptions.AMQPError as exc:
            raise connection_error(exc, self._url) from None
        return QueueState(
            self._queue, frame.method.message_count, frame.method.consumer_count
        )

    def _add_consumer(self) -> None:
        index = len(self._channels)
        channel = self._connection.channel()
        unacked: set[int] = set()

        def on_message(_ch: Any, method: Any, props: Any, body: bytes) -> None:
            unacked.add(method.delivery_tag)
            tag = self._next_tag()
            self._tags[tag] = (index, method.delivery_tag)
            self._buffer.append(
                IncomingMessage(
                    delivery_tag=tag,
                    redelivered=bool(method.redelivered),
                    exchange=method.exchange,
                    routing_key=method.routing_key,
                    body=bytes(body or b""),
                    properties=Properties.from_pika(props),
                )
            )

        channel.basic_qos(prefetch_count=self._prefetch)
        tag = channel.basic_consume(self._queue, on_message, auto_ack=False)
        self._channels.append((channel, tag, unacked))

    def _next_tag(self) -> int:
        self._seq += 1
        return self._seq

    def _starved(self) -> bool:
        return all(len(unacked) >= self._prefetch for _c, _t, unacked in self._channels)

    def take(
        self, max_count: int, *, idle_seconds: float = 0.25
    ) -> list[IncomingMessage]:
        """
        Return up to *max_count* messages (fewer once none arrives for *idle_seconds*).

        An empty list means the queue had nothing ready for this reader.
        """
        try:
            return self._take(max_count, idle_seconds)
        except pika.exceptions.ChannelClosedByBroker as exc:
            what = f"consume from queue {self._queue!r}"
            raise refused(what, exc) from None
        except pika.exceptions.AMQPError as exc:
            raise connection_error(exc, self._url) from None

    def _take(self, max_count: int, idle_seconds: float) -> list[IncomingMessage]:
        last_arrival = time.monotonic()
        seen = len(self._buffer)
        while len(self._buffer) < max_count:
            if self._starved():
                self._add_consumer()  # every slot held: widen the window
            self._connection.process_data_events(time_limit=0.005)
            if len(self._buffer) != seen:
                seen = len(self._buffer)
                last_arrival = time.monotonic()
            elif time.monotonic() - last_arrival >= idle_seconds:
                break
        taken, self._buffer = self._buffer[:max_count], self._buffer[max_count:]
        return taken

    def ack(self, delivery_tags: Sequence[int]) -> None:
        """
        Acknowledge (remove) the given messages; held ones stay unacked.

        Per channel, tags below its lowest held message go in one
        ``multiple`` ack (a blocking ack per message costs a loop turn each);
        the rest one by one.
        """
        by_channel: dict[int, list[int]] = {}
        for tag in delivery_tags:
            found = self._tags.pop(tag, None)
            if found is not None:
                by_channel.setdefault(found[0], []).append(found[1])
        try:
            for index, tags in by_channel.items():
                self._ack_on(index, sorted(tags))
        except pika.exceptions.AMQPError as exc:
            raise connection_error(exc, self._url) from None

    def _ack_on(self, index: int, tags: list[int]) -> None:
        channel, _tag, unacked = self._channels[index]
        held = unacked.difference(tags)
        lowest_held = min(held) if held else None
        upto = [t for t in tags if lowest_held is None or t < lowest_held]
        if upto:
            channel.basic_ack(upto[-1], multiple=True)
        for tag in tags[len(upto) :]:
            channel.basic_ack(tag)
        unacked.difference_update(tags)

    def poll(self) -> None:
        """Answer heartbeats while the caller is busy elsewhere."""
        with contextlib.suppress(Exception):
            self._connection.process_data_events(time_limit=0)

    def close(self) -> None:
        """Release every held message (channels closed oldest first), then disconnect."""
        connection, self._connection = self._connection, None
        channels, self._channels = self._channels, []
        self._tags.clear()
        self._buffer.clear()
        if connection is None:
            return
        self._connection = connection  # state() below reads through it
        try:
            if len(channels) > 1:
                self._stop_consumers(channels)
            for i, (channel, _tag, unacked) in enumerate(channels):
                before = self._ready() if len(channels) > 1 else None
                with contextlib.suppress(Exception):
                    if channel.is_open:
                        channel.close()
                if before is not None and i < len(channels) - 1:
                    self._await_ready(before + len(unacked))
        finally:
            self._connection = None
            with contextlib.suppress(Exception):
                connection.close()

    def _stop_consumers(self, channels: list[tuple[Any, str, set[int]]]) -> None:
        # With several channels, a message released by one would be delivered
        # straight to a consumer that still has room on another, and come back
        # out of order: stop every consumer before releasing anything. pika
        # requeues deliveries it has not dispatched yet, so dispatch them first.
        with contextlib.suppress(Exception):
            self._connection.process_data_events(time_limit=0)
        for channel, tag, _unacked in channels:
            with contextlib.suppress(Exception):
                channel.basic_cancel(tag)

    def _ready(self) -> int | None:
        try:
            return self.state().message_count
        except errors.BrokerError:
            return None

    def _await_ready(self, count: int, timeout_seconds: float = 5.0) -> None:
        # A quorum queue applies the returns of different channels in the
        # order its log receives them, not the order the channels closed:
        # wait until one channel's messages are back before closing the next.
        deadline = time.monotonic() + timeout_seconds
        while time.monotonic() < deadline:
            ready = self._ready()
            if ready is None or ready >= count:
                return
            time.sleep(0.005)
