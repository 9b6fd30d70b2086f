-- Foundation schema: merchants and their API keys, transactions (versioned), idempotency
-- keys, and the transactional outbox.

CREATE TABLE merchants (
    id          UUID PRIMARY KEY,
    name        TEXT NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- API keys are stored only as SHA-256 hashes; `prefix` (the first characters) lets a
-- merchant tell its keys apart without the secret ever being stored.
CREATE TABLE api_keys (
    id           UUID PRIMARY KEY,
    merchant_id  UUID NOT NULL REFERENCES merchants (id),
    key_hash     BYTEA NOT NULL UNIQUE CHECK (length(key_hash) = 32),
    prefix       TEXT NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    revoked_at   TIMESTAMPTZ
);
CREATE INDEX api_keys_merchant ON api_keys (merchant_id);

CREATE TABLE transactions (
    id                  UUID PRIMARY KEY,                 -- UUIDv7: time ordered
    merchant_id         UUID NOT NULL REFERENCES merchants (id),
    kind                TEXT NOT NULL CHECK (kind IN ('deposit', 'withdrawal')),
    amount              BIGINT NOT NULL CHECK (amount > 0),  -- minor units
    currency            CHAR(3) NOT NULL,
    customer_reference  TEXT NOT NULL,
    gateway             TEXT,
    status              TEXT NOT NULL CHECK (status IN
                          ('pending', 'submitting', 'submitted', 'retry_scheduled', 'succeeded', 'failed')),
    version             BIGINT NOT NULL DEFAULT 0,
    attempts            INTEGER NOT NULL DEFAULT 0,
    next_attempt_at     TIMESTAMPTZ,
    provider_reference  TEXT,
    failure_code        TEXT,
    failure_message     TEXT,
    callback_url        TEXT,
    metadata            JSONB NOT NULL DEFAULT '{}'::jsonb,
    created_at          TIMESTAMPTZ NOT NULL,
    updated_at          TIMESTAMPTZ NOT NULL
);
-- Keyset pagination per merchant, newest first, optionally by status.
CREATE INDEX transactions_merchant_id ON transactions (merchant_id, id DESC);
CREATE INDEX transactions_merchant_status_id ON transactions (merchant_id, status, id DESC);
-- The retry scheduler's scan.
CREATE INDEX transactions_due_retries ON transactions (next_attempt_at) WHERE status = 'retry_scheduled';
-- Reconciliation of transactions stuck mid-flight.
CREATE INDEX transactions_in_flight ON transactions (updated_at) WHERE status IN ('submitting', 'submitted');

-- Stripe-style idempotency keys. The stored response is replayed for the same key and the
-- same request; `request_hash` tells a different request under a reused key.
CREATE TABLE idempotency_keys (
    merchant_id      UUID NOT NULL REFERENCES merchants (id),
    key              TEXT NOT NULL CHECK (length(key) BETWEEN 1 AND 255),
    request_hash     BYTEA NOT NULL,
    response_status  SMALLINT NOT NULL,
    response_body    JSONB NOT NULL,
    transaction_id   UUID REFERENCES transactions (id),
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (merchant_id, key)
);
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);

-- Transactional outbox: written in the same commit as the state it announces, published to
-- Kafka by a relay, then stamped. `topic` is the logical topic (without the deployment prefix).
CREATE TABLE outbox (
    id            BIGSERIAL PRIMARY KEY,
    topic         TEXT NOT NULL,
    message_key   TEXT NOT NULL,
    payload       BYTEA NOT NULL,
    headers       JSONB NOT NULL DEFAULT '{}'::jsonb,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    published_at  TIMESTAMPTZ
);
CREATE INDEX outbox_unpublished ON outbox (id) WHERE published_at IS NULL;

-- Wake the relay at once instead of waiting for its next poll.
CREATE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('paygate_outbox', '');
    RETURN NULL;
END $$;
CREATE TRIGGER outbox_notify AFTER INSERT ON outbox
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();
