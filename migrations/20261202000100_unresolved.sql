-- Money safety (issue 12).
--
-- `unresolved`: a provider may have executed the payment and we cannot tell yet. Never failed
-- automatically; reconciliation keeps asking (next_attempt_at = the next status query).
ALTER TABLE transactions DROP CONSTRAINT transactions_status_check;
ALTER TABLE transactions ADD CONSTRAINT transactions_status_check CHECK (status IN
    ('pending', 'submitting', 'submitted', 'retry_scheduled', 'succeeded', 'failed', 'unresolved'));

-- Since when the provider at routed_gateway may hold the payment (first ambiguous outcome).
-- While set, no other gateway may take it; the status "not found" counts as "never executed"
-- only once that provider's settle window has passed since this moment.
ALTER TABLE transactions ADD COLUMN ambiguous_since TIMESTAMPTZ;

-- Reconciliation's scan of unresolved transactions whose next status query is due.
CREATE INDEX transactions_unresolved_due ON transactions (next_attempt_at) WHERE status = 'unresolved';

-- Every resolution by hand: who, when, why, from what. Written in the same commit as the
-- version-checked change it records.
CREATE TABLE transaction_resolutions (
    id               BIGSERIAL PRIMARY KEY,
    transaction_id   UUID NOT NULL REFERENCES transactions (id),
    previous_status  TEXT NOT NULL,
    previous_version BIGINT NOT NULL,
    resolved_status  TEXT NOT NULL CHECK (resolved_status IN ('succeeded', 'failed')),
    actor            TEXT NOT NULL CHECK (length(actor) BETWEEN 1 AND 200),
    reason           TEXT NOT NULL CHECK (length(reason) BETWEEN 1 AND 2000),
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX transaction_resolutions_transaction ON transaction_resolutions (transaction_id);

-- The merchant is told once that a payment is unresolved (`transaction.unresolved`).
ALTER TABLE webhook_events DROP CONSTRAINT webhook_events_event_type_check;
ALTER TABLE webhook_events ADD CONSTRAINT webhook_events_event_type_check CHECK (event_type IN
    ('transaction.succeeded', 'transaction.failed', 'transaction.unresolved'));
