-- Transaction history (issue 19): every state a payment entered, with the gateway and attempt
-- number of that moment, for the console's timeline, gateway health and activity chart.
--
-- Why triggers: every writer that changes a payment's state (the API's insert, the payment
-- processor, the callback processor, reconciliation, a person's resolution) is then recorded
-- in the same commit as the change, and none has to remember to. The function is one INSERT:
-- it runs on the hot path of every state change.
--
-- from_status NULL: the payment was created. A row with from_status 'submitting' is one
-- provider attempt finishing (its start is the previous row of the payment, the one that
-- entered 'submitting'). `gateway` is routed_gateway at that moment. `at` is the writing
-- transaction's now(): one statement per change on every writer, so its own time.
CREATE TABLE transaction_history (
    id              BIGSERIAL PRIMARY KEY,
    transaction_id  UUID NOT NULL REFERENCES transactions (id),
    version         BIGINT NOT NULL,
    from_status     TEXT,
    to_status       TEXT NOT NULL,
    gateway         TEXT,
    attempt         INTEGER NOT NULL,
    failure_code    TEXT,
    at              TIMESTAMPTZ NOT NULL DEFAULT now()
);
-- One payment's history, in order (the timeline; an attempt's start).
CREATE INDEX transaction_history_transaction ON transaction_history (transaction_id, id);
-- Gateway health: attempts that finished since a moment, over every gateway.
CREATE INDEX transaction_history_attempts ON transaction_history (at) WHERE from_status = 'submitting';
-- The activity chart: payments that reached an outcome since a moment.
CREATE INDEX transaction_history_outcomes ON transaction_history (at)
    WHERE to_status IN ('succeeded', 'failed', 'unresolved');

CREATE FUNCTION transaction_history_record() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO transaction_history (transaction_id, version, from_status, to_status, gateway, attempt, failure_code)
    VALUES (NEW.id, NEW.version, CASE WHEN TG_OP = 'UPDATE' THEN OLD.status END, NEW.status,
            NEW.routed_gateway, NEW.attempts, NEW.failure_code);
    RETURN NULL;
END $$;
CREATE TRIGGER transactions_history_insert AFTER INSERT ON transactions
    FOR EACH ROW EXECUTE FUNCTION transaction_history_record();
CREATE TRIGGER transactions_history_update AFTER UPDATE OF status ON transactions
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION transaction_history_record();
