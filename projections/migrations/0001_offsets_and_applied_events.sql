-- The projection writer's own progress (DESIGN.md §6): written in the same transaction as the
-- rows of each batch, so that effects and progress commit together. Kafka's committed offsets are
-- only a hint; on partition assignment the writer seeks to these.
CREATE TABLE projection_offsets (
    topic        text        NOT NULL,
    partition    integer     NOT NULL CHECK (partition >= 0),
    next_offset  bigint      NOT NULL CHECK (next_offset >= 0),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, partition)
);

-- Every event applied, by its id: a redelivered event finds its id here and is skipped (and
-- counted), so that nothing is applied twice.
CREATE TABLE applied_events (
    event_id     text        PRIMARY KEY,
    topic        text        NOT NULL,
    partition    integer     NOT NULL CHECK (partition >= 0),
    "offset"     bigint      NOT NULL CHECK ("offset" >= 0),
    applied_at   timestamptz NOT NULL DEFAULT now()
);
