"""The PostgreSQL broker's tables and statements (``{s}`` stands for its schema).

Kept apart from :mod:`chard.brokers.postgres` so the broker reads as behaviour; the README's
PostgreSQL section documents the tables.
"""

from __future__ import annotations

#: Version 1 of the broker's tables (a later version appends a script).
MIGRATIONS = (
    """
    CREATE TABLE {s}.chard_messages (
        id bigserial PRIMARY KEY,
        queue text NOT NULL,
        priority smallint NOT NULL,
        not_before timestamptz NOT NULL DEFAULT now(),
        body bytea NOT NULL,
        delivery_count integer NOT NULL DEFAULT 0,
        lease_owner text,
        lease_token bigint,
        lease_expires timestamptz
    );
    CREATE INDEX chard_messages_next ON {s}.chard_messages (queue, priority, id);
    CREATE INDEX chard_messages_owner ON {s}.chard_messages (lease_owner)
        WHERE lease_owner IS NOT NULL;
    CREATE TABLE {s}.chard_dead_letters (
        id bigserial PRIMARY KEY,
        queue text NOT NULL,
        priority smallint NOT NULL,
        body bytea NOT NULL,
        reason text NOT NULL,
        failed_at timestamptz NOT NULL DEFAULT now(),
        delivery_count integer NOT NULL
    );
    CREATE TABLE {s}.chard_broadcasts (
        id bigserial PRIMARY KEY,
        channel text NOT NULL,
        payload bytea NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now()
    );
    CREATE INDEX chard_broadcasts_channel ON {s}.chard_broadcasts (channel, id);
    """,
)

#: First statement of a transaction that must survive a server crash once it returns.
DURABLE = "SET LOCAL synchronous_commit = on"
WAITING = "(lease_expires IS NULL OR lease_expires <= now())"
INSERT = (
    "INSERT INTO {s}.chard_messages (queue, priority, not_before, body)"
    " VALUES (%s, %s, coalesce(to_timestamp(%s), now()), %s)"
)
# Any number of messages and the notification of their queues in one statement: one round
# trip and one commit (the notifications are sent at that commit).
INSERT_MANY = """
WITH stored AS (
    INSERT INTO {s}.chard_messages (queue, priority, not_before, body)
    SELECT q, p, coalesce(to_timestamp(e), now()), b
    FROM unnest(%s::text[], %s::smallint[], %s::float8[], %s::bytea[]) AS m(q, p, e, b)
    RETURNING queue
)
SELECT pg_notify(%s, queue) FROM (SELECT DISTINCT queue FROM stored) AS queues
"""
LEASE = f"""
WITH picked AS (
    SELECT id FROM {{s}}.chard_messages
    WHERE queue = %(queue)s AND not_before <= now() AND {WAITING}
    ORDER BY priority, id LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
UPDATE {{s}}.chard_messages AS m
SET lease_owner = %(owner)s, lease_token = %(token)s,
    lease_expires = now() + make_interval(secs => %(lease)s),
    delivery_count = m.delivery_count + 1
FROM picked WHERE m.id = picked.id
RETURNING m.id, m.lease_token, m.queue, m.body, m.delivery_count, m.priority
"""
# Seconds until the first of these queues' messages (or lapsing leases) falls due.
NEXT_DUE = """
SELECT extract(epoch FROM min(greatest(not_before, coalesce(lease_expires, not_before))) - now())
FROM {s}.chard_messages WHERE queue = ANY(%s)
"""
MINE = "id = %s AND lease_token = %s"
TAKE_OVER = """
UPDATE {s}.chard_messages
SET lease_owner = %(owner)s, lease_token = %(token)s,
    lease_expires = now() + make_interval(secs => %(lease)s)
WHERE lease_owner = %(dead)s
RETURNING id, lease_token, queue, body, delivery_count, priority
"""
PRUNE_BROADCASTS = """
DELETE FROM {s}.chard_broadcasts WHERE channel = %(channel)s AND id <= (
    SELECT id FROM {s}.chard_broadcasts WHERE channel = %(channel)s
    ORDER BY id DESC LIMIT 1 OFFSET %(keep)s
)
"""
