"""Tuning (`RelayConfig`) and running counts (`RelayStats`) of an `OutboxRelay`."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from reliable import errors


@dataclass(frozen=True, slots=True, kw_only=True)
class RelayConfig:
    """Tuning of one relay process (CLI flags map onto these fields)."""

    batch_size: int = 500
    window: int = 500
    #: How long a claim holds its rows; must exceed confirm timeout + marking.
    lease_seconds: float = 60.0
    confirm_timeout_seconds: float = 30.0
    #: Longest wait between checks when no NOTIFY arrives (the safety net).
    poll_interval_seconds: float = 1.0
    #: Pause before an unconfirmed (fate unknown) row is sent again.
    unconfirmed_retry_seconds: float = 1.0
    #: Keep published rows this long (0: delete them once confirmed).
    keep_published_seconds: float = 0.0
    cleanup_interval_seconds: float = 60.0
    cleanup_batch_size: int = 1000
    #: How often backlog/dead/oldest-age gauges are refreshed.
    status_interval_seconds: float = 10.0
    reconnect_max_seconds: float = 10.0
    #: Wait for the WAL flush on the relay's own commits. Off by default: a
    #: lost relay commit after a PostgreSQL crash only causes a duplicate.
    synchronous_commit: bool = False

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.window < 1:
            msg = f"batch_size and window must be at least 1, got {self.batch_size!r} and {self.window!r}"
            raise errors.ConfigError(msg, key="batch_size")
        if self.lease_seconds <= self.confirm_timeout_seconds:
            msg = (
                f"lease_seconds {self.lease_seconds!r} must exceed confirm_timeout_seconds "
                f"{self.confirm_timeout_seconds!r}; raise the lease"
            )
            raise errors.ConfigError(msg, key="lease_seconds")


@dataclass(slots=True)
class RelayStats:
    """Counts since the relay started (also exported as Prometheus metrics)."""

    batches: int = 0
    published: int = 0
    failed: int = 0
    dead: int = 0
    unconfirmed: int = 0
    reconnects: int = 0
    by_reason: Counter[str] = field(default_factory=Counter)
