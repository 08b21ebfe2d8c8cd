"""Checked by mypy only, never run: the public API as users write it."""

from __future__ import annotations

import reliable
from reliable import Settings

settings: Settings = Settings.from_env({"RELIABLE_AMQP_URL": "amqp://h/%2F"})
error: reliable.ReliableError = reliable.BrokerConnectionError()

# The relay (issue 3).
rel = reliable.Reliable(database_url="postgresql:///x", amqp_url="amqp://h/%2F")
relay: reliable.OutboxRelay = rel.relay(
    config=reliable.RelayConfig(batch_size=100),
    retry_policy=reliable.RetryPolicy(max_attempts=3),
)
stats = relay.run_once()
published: int = stats.published


# -- effectively-once tasks and the inbox (reliable.tasks / reliable.inbox) --------
def _tasks_api(rel: reliable.Reliable, conn: reliable.db.Connection) -> None:
    @rel.task(queue="payments", max_retries=5, retry_backoff=True)
    def charge(conn: reliable.db.Connection, order_id: int) -> dict[str, int]:
        return {"order_id": order_id}

    task_id: str = rel.outbox.enqueue(conn, charge.s(42).set(countdown=30))
    with rel.inbox.claim(conn, "billing", task_id) as first:
        handled: bool = first
    purged: int = rel.inbox.purge(conn, older_than_seconds=7 * 86400, batch_size=500)
    inbox: reliable.Inbox = rel.inbox
    del handled, purged, inbox
