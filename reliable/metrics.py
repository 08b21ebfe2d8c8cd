"""
Prometheus metrics: the only module that imports prometheus_client.

Each `Metrics` owns a registry (no process-global state), so two `Reliable`
objects in one process, or tests, never collide. Names carry the
``reliable_`` prefix and base units (seconds, bytes).
"""

from __future__ import annotations

from typing import Any

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from reliable import errors

_BATCH_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


class Metrics:
    """Every metric the toolkit exports, registered in its own registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        # outbox and relay
        self.outbox_published = Counter(
            "reliable_outbox_published",
            "Outbox messages confirmed by the broker.",
            ["exchange"],
            registry=r,
        )
        self.outbox_failures = Counter(
            "reliable_outbox_failures",
            "Outbox publish attempts that failed, by reason.",
            ["reason"],
            registry=r,
        )
        self.outbox_dead = Gauge(
            "reliable_outbox_dead_rows",
            "Outbox rows that exhausted their attempts.",
            registry=r,
        )
        self.outbox_backlog = Gauge(
            "reliable_outbox_backlog", "Outbox rows not yet published.", registry=r
        )
        self.outbox_oldest_age = Gauge(
            "reliable_outbox_oldest_unsent_age_seconds",
            "Age of the oldest unpublished outbox row.",
            registry=r,
        )
        self.outbox_batch_seconds = Histogram(
            "reliable_outbox_batch_duration_seconds",
            "Time to claim, publish and mark one relay batch.",
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.relay_last_batch = Gauge(
            "reliable_relay_last_batch_timestamp_seconds",
            "Unix time of the relay's last completed loop.",
            registry=r,
        )
        # inbox and tasks
        self.inbox_processed = Counter(
            "reliable_inbox_processed",
            "Messages whose handler ran and committed.",
            ["consumer"],
            registry=r,
        )
        self.inbox_duplicates = Counter(
            "reliable_inbox_duplicates",
            "Duplicate messages skipped by the inbox.",
            ["consumer"],
            registry=r,
        )
        self.inbox_failures = Counter(
            "reliable_inbox_failures",
            "Handler failures, by exception type.",
            ["consumer", "exception"],
            registry=r,
        )
        self.inbox_rows = Gauge(
            "reliable_inbox_rows", "Rows in the inbox table.", registry=r
        )
        # dead letters
        self.dlq_replayed = Counter(
            "reliable_dlq_replayed",
            "Dead letters republished and confirmed.",
            ["queue"],
            registry=r,
        )
        self.dlq_parked = Counter(
            "reliable_dlq_parked",
            "Dead letters moved to a parking lot after too many replays.",
            ["queue"],
            registry=r,
        )
        self.dlq_depth = Gauge(
            "reliable_dlq_depth",
            "Messages in a dead-letter queue.",
            ["queue"],
            registry=r,
        )

    def serve(self, port: int, addr: str = "0.0.0.0") -> Any:
        """Expose ``/metrics`` on *port* in a daemon thread; returns the server."""
        try:
            server, _thread = prometheus_client.start_http_server(
                port, addr=addr, registry=self.registry
            )
        except OSError as exc:
            msg = (
                f"cannot serve metrics on {addr}:{port} ({exc.strerror or exc}); "
                "choose a free port with --metrics-port or RELIABLE_METRICS_PORT"
            )
            raise errors.ConfigError(msg, key="metrics_port") from None
        return server

    def render(self) -> bytes:
        """The text exposition format, for tests and ad-hoc dumps."""
        return prometheus_client.generate_latest(self.registry)

    def value(self, name: str, labels: dict[str, str] | None = None) -> float:
        """Read one sample (tests, status commands); 0.0 if absent."""
        got = self.registry.get_sample_value(name, labels or {})
        return float(got) if got is not None else 0.0
