-- insert_outbox --
-- One message, in the caller's transaction.
INSERT INTO {schema}.reliable_outbox
    (message_id, exchange, routing_key, body, properties, ordering_key, available_at)
VALUES
    (%(message_id)s, %(exchange)s, %(routing_key)s, %(body)s, %(properties)s,
     %(ordering_key)s, now() + make_interval(secs => %(delay_seconds)s));

-- claim_batch --
-- Claim, in one statement (one round trip), up to %(limit)s due rows without
-- an ordering key and up to %(limit)s due heads of keyed queues.
--
-- Unkeyed rows: in due order. The lease moves available_at forward, so the
-- claim commits at once and no transaction stays open while the relay talks
-- to RabbitMQ; a crashed relay's rows come due again when the lease runs out.
-- SKIP LOCKED lets several relays claim side by side.
--
-- Keyed rows: only the head (first row in commit-stamp order) of each key
-- whose head is due. A key whose head is leased, backing off or delayed is
-- skipped, so its later rows wait: one message per key is in flight across
-- all relays. The due test is on the locked row itself (o), so READ COMMITTED
-- re-checks it against a claim another relay committed after this
-- statement's snapshot was taken.
WITH RECURSIVE unkeyed AS (
    SELECT id
      FROM {schema}.reliable_outbox
     WHERE ordering_key IS NULL AND published_at IS NULL AND dead_at IS NULL
       AND available_at <= now()
     ORDER BY available_at, id
     LIMIT %(limit)s
       FOR NO KEY UPDATE SKIP LOCKED
), keys (k) AS (
    -- The distinct pending keys by a loose index scan: one index probe per key,
    -- not one row visit per pending keyed row.
    SELECT min(ordering_key)
      FROM {schema}.reliable_outbox
     WHERE ordering_key IS NOT NULL AND published_at IS NULL AND dead_at IS NULL
    UNION ALL
    SELECT (SELECT min(ordering_key)
              FROM {schema}.reliable_outbox
             WHERE ordering_key > keys.k AND published_at IS NULL AND dead_at IS NULL)
      FROM keys
     WHERE keys.k IS NOT NULL
), heads AS (
    SELECT h.id
      FROM keys
     CROSS JOIN LATERAL (
           SELECT id
             FROM {schema}.reliable_outbox
            WHERE ordering_key = keys.k AND published_at IS NULL AND dead_at IS NULL
            ORDER BY commit_seq, id
            LIMIT 1) AS h
     WHERE keys.k IS NOT NULL
), keyed AS (
    SELECT o.id
      FROM {schema}.reliable_outbox AS o
     WHERE o.id IN (SELECT id FROM heads)
       AND o.published_at IS NULL AND o.dead_at IS NULL
       AND o.available_at <= now()
     ORDER BY o.available_at, o.id
     LIMIT %(limit)s
       FOR NO KEY UPDATE OF o SKIP LOCKED
)
UPDATE {schema}.reliable_outbox AS o
   SET available_at = now() + make_interval(secs => %(lease_seconds)s),
       claim_token = %(token)s
 WHERE o.id IN (SELECT id FROM unkeyed UNION ALL SELECT id FROM keyed)
RETURNING o.id, o.message_id, o.exchange, o.routing_key, o.body, o.properties,
          o.ordering_key, o.attempts, o.created_at;

-- delete_published --
-- Confirmed by the broker: gone, one statement per batch.
DELETE FROM {schema}.reliable_outbox WHERE id = ANY(%(ids)s);

-- keep_published --
-- Confirmed by the broker, kept for the retention period.
UPDATE {schema}.reliable_outbox
   SET published_at = now(), claim_token = NULL
 WHERE id = ANY(%(ids)s);

-- record_failures --
-- Returned, nacked or refused rows: one more attempt, the error, the next due
-- time (backoff computed by RetryPolicy), or dead. Only rows this relay still
-- holds: after a lease ran out another relay may own them.
UPDATE {schema}.reliable_outbox AS o
   SET attempts = o.attempts + 1,
       last_error = f.error,
       available_at = now() + make_interval(secs => f.delay),
       dead_at = CASE WHEN f.dead THEN now() END,
       claim_token = NULL
  FROM unnest(%(ids)s::bigint[], %(errors)s::text[], %(delays)s::float8[],
              %(dead)s::boolean[]) AS f(id, error, delay, dead)
 WHERE o.id = f.id AND o.claim_token = %(token)s;

-- release_claims --
-- Unconfirmed rows (fate unknown) or rows not sent: due again after a short
-- pause, attempts untouched.
UPDATE {schema}.reliable_outbox
   SET available_at = now() + make_interval(secs => %(delay_seconds)s),
       claim_token = NULL
 WHERE id = ANY(%(ids)s) AND claim_token = %(token)s;

-- next_due --
-- Seconds until the earliest pending row is due (negative: due now).
SELECT EXTRACT(EPOCH FROM (LEAST(
           (SELECT min(available_at) FROM {schema}.reliable_outbox
             WHERE ordering_key IS NULL AND published_at IS NULL AND dead_at IS NULL),
           (SELECT min(available_at) FROM {schema}.reliable_outbox
             WHERE ordering_key IS NOT NULL AND published_at IS NULL AND dead_at IS NULL)
       ) - now()))::float8 AS seconds;

-- outbox_summary --
-- Backlog, dead rows and the age of the oldest row that is due or in flight
-- (delayed rows not yet due and rows backing off do not count as late).
SELECT count(*) FILTER (WHERE published_at IS NULL AND dead_at IS NULL) AS backlog,
       count(*) FILTER (WHERE published_at IS NULL AND dead_at IS NULL
                          AND available_at <= now()) AS due,
       count(*) FILTER (WHERE claim_token IS NOT NULL) AS in_flight,
       count(*) FILTER (WHERE published_at IS NULL AND dead_at IS NULL
                          AND attempts > 0) AS retrying,
       count(*) FILTER (WHERE dead_at IS NOT NULL) AS dead,
       count(*) FILTER (WHERE published_at IS NOT NULL) AS published_kept,
       COALESCE(EXTRACT(EPOCH FROM now() - min(created_at) FILTER (
           WHERE published_at IS NULL AND dead_at IS NULL
             AND (available_at <= now() OR claim_token IS NOT NULL))), 0)::float8
           AS oldest_age_seconds
  FROM {schema}.reliable_outbox;

-- outbox_by_destination --
SELECT exchange, routing_key,
       count(*) FILTER (WHERE published_at IS NULL AND dead_at IS NULL) AS backlog,
       count(*) FILTER (WHERE dead_at IS NOT NULL) AS dead,
       COALESCE(EXTRACT(EPOCH FROM now() - min(created_at) FILTER (
           WHERE published_at IS NULL AND dead_at IS NULL)), 0)::float8 AS oldest_age_seconds,
       max(last_error) FILTER (WHERE published_at IS NULL) AS last_error
  FROM {schema}.reliable_outbox
 WHERE published_at IS NULL
 GROUP BY exchange, routing_key
 ORDER BY count(*) DESC, exchange, routing_key
 LIMIT %(limit)s;

-- list_pending --
SELECT id, message_id, exchange, routing_key, ordering_key, attempts, last_error,
       created_at, available_at, length(body) AS body_bytes,
       claim_token IS NOT NULL AS claimed
  FROM {schema}.reliable_outbox
 WHERE published_at IS NULL AND dead_at IS NULL
 ORDER BY id
 LIMIT %(limit)s;

-- list_dead --
SELECT id, message_id, exchange, routing_key, ordering_key, attempts, last_error,
       created_at, dead_at, length(body) AS body_bytes
  FROM {schema}.reliable_outbox
 WHERE dead_at IS NOT NULL
 ORDER BY id
 LIMIT %(limit)s;

-- retry_rows --
-- Make rows due now with a fresh attempt budget; matches row ids or message ids.
UPDATE {schema}.reliable_outbox
   SET dead_at = NULL, attempts = 0, available_at = now(), claim_token = NULL
 WHERE published_at IS NULL
   AND (id::text = ANY(%(ids)s) OR message_id = ANY(%(ids)s))
RETURNING id, message_id;

-- retry_all_dead --
UPDATE {schema}.reliable_outbox
   SET dead_at = NULL, attempts = 0, available_at = now(), claim_token = NULL
 WHERE dead_at IS NOT NULL
RETURNING id, message_id;

-- purge_dead --
-- Bounded: callers repeat until fewer than %(limit)s rows go.
DELETE FROM {schema}.reliable_outbox
 WHERE id IN (SELECT id FROM {schema}.reliable_outbox
               WHERE dead_at IS NOT NULL
                 AND dead_at < now() - make_interval(secs => %(older_than_seconds)s)
               ORDER BY dead_at
               LIMIT %(limit)s);

-- purge_published --
-- Retention of kept rows, bounded like purge_dead.
DELETE FROM {schema}.reliable_outbox
 WHERE id IN (SELECT id FROM {schema}.reliable_outbox
               WHERE published_at IS NOT NULL
                 AND published_at < now() - make_interval(secs => %(older_than_seconds)s)
               ORDER BY published_at
               LIMIT %(limit)s);

-- relay_session --
-- The relay's own connection: its commits (claims, marks) need not wait for
-- the WAL flush. A PostgreSQL crash can then undo the last few hundred
-- milliseconds of claims and marks, which only re-publishes those rows
-- (a duplicate, never a loss); the application's own commits are untouched.
SET synchronous_commit = off;
