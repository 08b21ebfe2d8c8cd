-- insert_dlq_run --
INSERT INTO {schema}.reliable_dlq_runs
    (started_at, os_user, hostname, command, queue, target, filters, counts, dry_run, interrupted)
VALUES
    (%(started_at)s, %(os_user)s, %(hostname)s, %(command)s, %(queue)s, %(target)s,
     %(filters)s, %(counts)s, %(dry_run)s, %(interrupted)s)
RETURNING id;

-- list_dlq_runs --
SELECT id, started_at, finished_at, os_user, hostname, command, queue, target,
       filters, counts, dry_run, interrupted
  FROM {schema}.reliable_dlq_runs
 WHERE (%(queue)s::text IS NULL OR queue = %(queue)s::text)
 ORDER BY started_at DESC, id DESC
 LIMIT %(limit)s;

-- dlq_task_failures --
-- The newest failure record per task id (records come from the effectively-once tasks).
SELECT DISTINCT ON (task_id) task_id, task_name, exception_type, exception_message, failed_at
  FROM {schema}.reliable_task_failures
 WHERE task_id = ANY(%(task_ids)s)
 ORDER BY task_id, failed_at DESC, id DESC;
