-- Every provider callback the callback processor settled, whatever became of it.
--
-- `(gateway, provider_event_id)` is unique: a provider delivering the same event twice (or a
-- replayed Kafka message) finds its row and changes nothing. The row is written in the same
-- Postgres transaction as the state change it caused (if any), so "logged as applied" and
-- "applied" cannot disagree.
--
-- outcome:
--   applied    the callback moved the transaction to its terminal state;
--   duplicate  kept for completeness: a repeat of a logged event is absorbed by the unique
--              key and never gets a row of its own;
--   late       the transaction was already terminal with the same outcome (nothing to do);
--   conflict   the callback contradicts our record (failed after succeeded, another gateway,
--              a transaction never submitted): stored, flagged, never applied;
--   mismatch   the reported amount or currency differs from ours: flagged, not applied.
CREATE TABLE callback_log (
    id                  BIGSERIAL PRIMARY KEY,
    gateway             TEXT NOT NULL,
    provider_event_id   TEXT NOT NULL CHECK (length(provider_event_id) BETWEEN 1 AND 512),
    transaction_id      UUID NOT NULL REFERENCES transactions (id),
    reported_status     TEXT NOT NULL CHECK (reported_status IN ('succeeded', 'failed')),
    failure_code        TEXT,
    provider_reference  TEXT,
    reported_amount     BIGINT NOT NULL,                   -- minor units, as the provider said
    reported_currency   CHAR(3) NOT NULL,
    outcome             TEXT NOT NULL CHECK (outcome IN ('applied', 'duplicate', 'late', 'conflict', 'mismatch')),
    needs_review        BOOLEAN NOT NULL DEFAULT false,
    -- Why a callback was not applied, in words (never the callback body).
    detail              TEXT,
    -- The transaction's status and version when the callback was settled.
    status_before       TEXT NOT NULL,
    version_before      BIGINT NOT NULL,
    received_at         TIMESTAMPTZ NOT NULL,
    created_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (gateway, provider_event_id)
);
CREATE INDEX callback_log_transaction ON callback_log (transaction_id, id);
-- The review queue: conflicts and mismatches a person must look at.
CREATE INDEX callback_log_needs_review ON callback_log (created_at) WHERE needs_review;
