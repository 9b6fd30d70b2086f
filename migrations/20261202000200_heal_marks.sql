-- Re-announcements made by the healers (core/src/heal.rs): Postgres is the source of truth,
-- so a `pending` transaction nobody claimed, or a terminal one with no webhook event, is
-- announced again through the outbox when the broker lost its message. One row per
-- (transaction, kind) records the last re-announcement, so a scan re-announces a row at most
-- once per bound (and again only if that one was lost too).
CREATE TABLE heal_marks (
    transaction_id  UUID NOT NULL REFERENCES transactions (id),
    kind            TEXT NOT NULL CHECK (kind IN ('pending', 'completed')),
    -- The transaction version re-announced (a newer version is a new announcement).
    version         BIGINT NOT NULL,
    announced_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    times           INTEGER NOT NULL DEFAULT 1 CHECK (times >= 1),
    PRIMARY KEY (transaction_id, kind)
);
CREATE INDEX heal_marks_kind_announced ON heal_marks (kind, announced_at);

-- The pending healer's scan: few rows are `pending` at any time.
CREATE INDEX transactions_pending_since ON transactions (updated_at) WHERE status = 'pending';
-- The webhook healer's scan: terminal rows by when they became terminal.
CREATE INDEX transactions_terminal_since ON transactions (updated_at)
    WHERE status IN ('succeeded', 'failed');
