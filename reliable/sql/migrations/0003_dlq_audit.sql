-- One row per `reliable dlq` run that changed (or, with --dry-run, would have
-- changed) a queue: who ran what, with which filters, and what happened.
CREATE TABLE IF NOT EXISTS {schema}.reliable_dlq_runs (
    id          bigserial   PRIMARY KEY,
    started_at  timestamptz NOT NULL,
    finished_at timestamptz NOT NULL DEFAULT now(),
    os_user     text        NOT NULL,
    hostname    text        NOT NULL DEFAULT '',
    command     text        NOT NULL,
    queue       text        NOT NULL,
    target      text,
    filters     jsonb       NOT NULL DEFAULT '{{}}'::jsonb,
    counts      jsonb       NOT NULL DEFAULT '{{}}'::jsonb,
    dry_run     boolean     NOT NULL DEFAULT false,
    interrupted boolean     NOT NULL DEFAULT false
);

CREATE INDEX IF NOT EXISTS reliable_dlq_runs_started_idx
    ON {schema}.reliable_dlq_runs (started_at DESC);
