-- inbox_claim --
-- Record (consumer, message_id). A conflicting row that is not yet committed
-- makes this statement wait for that transaction: after its commit nothing is
-- inserted (a duplicate), after its rollback the row is inserted here.
INSERT INTO {schema}.reliable_inbox (consumer, message_id)
VALUES (%(consumer)s, %(message_id)s)
ON CONFLICT (consumer, message_id) DO NOTHING;

-- inbox_set_result --
-- The handler's JSON result, stored in the same transaction as the claim.
UPDATE {schema}.reliable_inbox
   SET result = %(result)s
 WHERE consumer = %(consumer)s AND message_id = %(message_id)s;

-- inbox_get --
SELECT consumer, message_id, processed_at, result
  FROM {schema}.reliable_inbox
 WHERE consumer = %(consumer)s AND message_id = %(message_id)s;

-- inbox_purge_batch --
-- At most %(batch_size)s rows older than the cut-off, so a purge never holds
-- long locks or produces one huge transaction.
DELETE FROM {schema}.reliable_inbox
 WHERE ctid IN (
       SELECT ctid
         FROM {schema}.reliable_inbox
        WHERE processed_at < now() - make_interval(secs => %(older_than_seconds)s)
        LIMIT %(batch_size)s);

-- inbox_count_older --
SELECT count(*) AS rows
  FROM {schema}.reliable_inbox
 WHERE processed_at < now() - make_interval(secs => %(older_than_seconds)s);

-- inbox_status --
-- Per consumer: rows and the age range, for `reliable inbox status`.
SELECT consumer,
       count(*)          AS rows,
       min(processed_at) AS oldest,
       max(processed_at) AS newest
  FROM {schema}.reliable_inbox
 GROUP BY consumer
 ORDER BY consumer;

-- inbox_row_count --
SELECT count(*) AS rows FROM {schema}.reliable_inbox;

-- task_failure_insert --
-- One final failure of an effectively-once task (its own transaction, after
-- the task's rollback), for the DLQ tooling to group by exception.
INSERT INTO {schema}.reliable_task_failures
    (consumer, task_name, task_id, queue, exception_type, exception_message,
     traceback, attempts)
VALUES
    (%(consumer)s, %(task_name)s, %(task_id)s, %(queue)s, %(exception_type)s,
     %(exception_message)s, %(traceback)s, %(attempts)s);

-- task_failures_recent --
SELECT id, consumer, task_name, task_id, queue, exception_type,
       exception_message, attempts, failed_at
  FROM {schema}.reliable_task_failures
 ORDER BY failed_at DESC, id DESC
 LIMIT %(limit)s;
