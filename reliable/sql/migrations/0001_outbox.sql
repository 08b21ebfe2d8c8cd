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
    -- Commit stamp of keyed rows, taken by a deferred trigger while the
    -- writing transaction commits: a transaction that commits after another
    -- one finished committing gets a larger stamp (see docs/outbox.md).
    commit_seq      bigint,
    -- The writing transaction's id: rows of transactions still in flight are
    -- invisible, so commit order is told from xid against pg_snapshot_xmin.
    xid             xid8        NOT NULL DEFAULT pg_current_xact_id(),
    created_at      timestamptz NOT NULL DEFAULT now(),
    -- Not published before this time (delay), and after a failure the next attempt.
    available_at    timestamptz NOT NULL DEFAULT now(),
    attempts        integer     NOT NULL DEFAULT 0,
    last_error      text,
    published_at    timestamptz,
    dead_at         timestamptz,
    -- The relay that holds the row between claim and mark. The claim also moves
    -- available_at forward by the lease, so a crashed relay's rows become due
    -- again when the lease runs out; the token keeps a relay whose lease ran
    -- out from recording failures over a newer claim.
    claim_token     uuid
);

CREATE SEQUENCE {schema}.reliable_outbox_commit_seq;

-- Unkeyed rows are claimed in due order straight from this index.
CREATE INDEX reliable_outbox_due
    ON {schema}.reliable_outbox (available_at, id)
    WHERE published_at IS NULL AND dead_at IS NULL AND ordering_key IS NULL;

-- Keyed rows: the head of each key's queue is its first row in this order.
CREATE INDEX reliable_outbox_ordering
    ON {schema}.reliable_outbox (ordering_key, commit_seq, id)
    WHERE published_at IS NULL AND dead_at IS NULL AND ordering_key IS NOT NULL;

CREATE INDEX reliable_outbox_dead
    ON {schema}.reliable_outbox (dead_at)
    WHERE dead_at IS NOT NULL;

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

-- Stamp keyed rows at commit time. A constraint trigger that is
-- INITIALLY DEFERRED runs during COMMIT, after all of the transaction's
-- statements, so the stamp follows commit order rather than the order in
-- which transactions started or took their xid. Unkeyed rows skip it.
CREATE FUNCTION {schema}.reliable_outbox_stamp() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE {schema}.reliable_outbox
       SET commit_seq = nextval('{schema}.reliable_outbox_commit_seq')
     WHERE id = NEW.id;
    RETURN NULL;
END
$$;

CREATE CONSTRAINT TRIGGER reliable_outbox_stamp
    AFTER INSERT ON {schema}.reliable_outbox
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW WHEN (NEW.ordering_key IS NOT NULL)
    EXECUTE FUNCTION {schema}.reliable_outbox_stamp();
