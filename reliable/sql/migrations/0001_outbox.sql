-- The transactional outbox: rows written in the application's transaction,
-- published later by `reliable outbox relay`.
CREATE TABLE {schema}.reliable_outbox (
    id              bigserial   PRIMARY KEY,
    message_id      text        NOT NULL,
    exchange        text        NOT NULL,
    routing_key     text        NOT NULL,
    body            bytea       NOT NULL,
    -- AMQP basic properties except message_id: content_type, content_encoding,
    -- headers, correlation_id, priority, expiration, type, reply_to, delivery_mode.
    properties      jsonb       NOT NULL DEFAULT '{{}}'::jsonb,
    -- Messages sharing an ordering key are published in commit order.
    ordering_key    text,
    -- The writing transaction's id: rows of transactions still in flight are
    -- invisible, so commit order is told from xid against pg_snapshot_xmin.
    xid             xid8        NOT NULL DEFAULT pg_current_xact_id(),
    created_at      timestamptz NOT NULL DEFAULT now(),
    -- Not published before this time (delay), and after a failure the next attempt.
    available_at    timestamptz NOT NULL DEFAULT now(),
    attempts        integer     NOT NULL DEFAULT 0,
    last_error      text,
    published_at    timestamptz,
    dead_at         timestamptz
);

CREATE INDEX reliable_outbox_due
    ON {schema}.reliable_outbox (available_at, id)
    WHERE published_at IS NULL AND dead_at IS NULL;

CREATE INDEX reliable_outbox_ordering
    ON {schema}.reliable_outbox (ordering_key, xid, id)
    WHERE published_at IS NULL AND dead_at IS NULL AND ordering_key IS NOT NULL;

CREATE INDEX reliable_outbox_published
    ON {schema}.reliable_outbox (published_at)
    WHERE published_at IS NOT NULL;

-- Wake relays at commit: NOTIFY is transactional, so a rolled-back
-- transaction wakes nobody. One notification per statement, not per row.
CREATE FUNCTION {schema}.reliable_outbox_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('reliable_outbox', TG_TABLE_SCHEMA);
    RETURN NULL;
END
$$;

CREATE TRIGGER reliable_outbox_notify
    AFTER INSERT ON {schema}.reliable_outbox
    FOR EACH STATEMENT EXECUTE FUNCTION {schema}.reliable_outbox_notify();
