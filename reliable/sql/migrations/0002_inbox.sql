-- The inbox: one row per (consumer, message) handled, written in the same
-- transaction as the handler's own writes.
CREATE TABLE {schema}.reliable_inbox (
    consumer      text        NOT NULL,
    message_id    text        NOT NULL,
    processed_at  timestamptz NOT NULL DEFAULT now(),
    -- The handler's JSON result (size-limited), so a duplicate can return it.
    result        jsonb,
    PRIMARY KEY (consumer, message_id)
);

-- BRIN, not B-tree: rows arrive in processed_at order, so block ranges find
-- the old rows for `reliable inbox purge` while costing each task's INSERT
-- almost nothing (measured: per-transaction cost ratio 0.70 -> 0.76 of a
-- bare INSERT transaction).
CREATE INDEX reliable_inbox_processed_at ON {schema}.reliable_inbox USING brin (processed_at);

-- Final failures of effectively-once tasks, for the DLQ tooling to group by exception.
CREATE TABLE {schema}.reliable_task_failures (
    id                bigserial   PRIMARY KEY,
    consumer          text        NOT NULL,
    task_name         text        NOT NULL,
    task_id           text        NOT NULL,
    queue             text,
    exception_type    text        NOT NULL,
    exception_message text        NOT NULL,
    traceback         text,
    attempts          integer     NOT NULL,
    failed_at         timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX reliable_task_failures_task_id ON {schema}.reliable_task_failures (task_id);
CREATE INDEX reliable_task_failures_failed_at ON {schema}.reliable_task_failures (failed_at);
