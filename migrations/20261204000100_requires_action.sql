-- Real providers (issue 16).
--
-- `requires_action`: the customer must finish a step at the provider (3-D Secure, a hosted
-- checkout page) before anything moves. next_action_url is where to send them;
-- next_attempt_at is when the step expires (the gateway's action_expires_after_ms): then the
-- provider is asked, and a payment it has not completed fails with action_expired.
ALTER TABLE transactions DROP CONSTRAINT transactions_status_check;
ALTER TABLE transactions ADD CONSTRAINT transactions_status_check CHECK (status IN
    ('pending', 'submitting', 'submitted', 'retry_scheduled', 'succeeded', 'failed', 'unresolved',
     'requires_action'));

ALTER TABLE transactions ADD COLUMN next_action_url TEXT
    CHECK (next_action_url IS NULL OR length(next_action_url) BETWEEN 1 AND 2048);

-- The expiry scan.
CREATE INDEX transactions_actions_due ON transactions (next_attempt_at) WHERE status = 'requires_action';

-- The merchant is told once that the customer must act (`transaction.requires_action`).
ALTER TABLE webhook_events DROP CONSTRAINT webhook_events_event_type_check;
ALTER TABLE webhook_events ADD CONSTRAINT webhook_events_event_type_check CHECK (event_type IN
    ('transaction.succeeded', 'transaction.failed', 'transaction.unresolved',
     'transaction.requires_action'));
