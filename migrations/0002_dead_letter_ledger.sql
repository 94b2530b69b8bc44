-- 0002_dead_letter_ledger: the dead letters whose offset a batch transaction
-- moved past, written by that same transaction.
--
-- A spool entry is published to the DLQ topic only if its row is here and
-- names the spool that holds it. The row and the offset move commit together,
-- so one read of both tells "committed as a dead letter by this instance",
-- "committed, but not as a dead letter" (another instance stored the message,
-- or dead-lettered it from its own spool) and "not committed yet" apart.
-- It is also the operators' queryable history of dead letters.

CREATE TABLE dead_letters (
    consumer_group   text NOT NULL,
    topic            text NOT NULL,
    partition        integer NOT NULL,
    "offset"         bigint NOT NULL,
    -- The dead-letter id, as in the spansink.dlq.id header.
    id               text NOT NULL,
    -- '' when the message had no valid tenant (missing or invalid header).
    tenant_id        text NOT NULL,
    stage            text NOT NULL,
    reason           text NOT NULL,
    error            text NOT NULL,
    sqlstate         text,
    -- The instance that committed it (--instance-id) and the spool that holds it.
    instance         text NOT NULL,
    spool_id         text NOT NULL,
    dead_lettered_at timestamptz NOT NULL DEFAULT now(),
    -- Set by `spansink replay` once the message is stored.
    replayed_at      timestamptz,
    -- One row per message of a partition: a transaction that moves the offset
    -- past a poison message inserts it with ON CONFLICT DO NOTHING.
    PRIMARY KEY (consumer_group, topic, partition, "offset")
);

COMMENT ON TABLE dead_letters IS
    'Dead letters, recorded by the transaction that moved their partition''s offset past them.';
COMMENT ON COLUMN dead_letters.spool_id IS
    'The spool directory that holds the message until the DLQ topic acknowledges it.';
COMMENT ON COLUMN dead_letters.replayed_at IS
    'When spansink replay stored the message; NULL while it has not been.';
