-- insert_outbox --
-- One message, in the caller's transaction.
INSERT INTO {schema}.reliable_outbox
    (message_id, exchange, routing_key, body, properties, ordering_key, available_at)
VALUES
    (%(message_id)s, %(exchange)s, %(routing_key)s, %(body)s, %(properties)s,
     %(ordering_key)s, now() + make_interval(secs => %(delay_seconds)s));
