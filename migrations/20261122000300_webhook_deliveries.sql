-- Webhook events and their durable delivery schedule (callback dispatcher).
--
-- The Kafka consumer only records an event and one delivery row per destination, in one
-- commit; a scheduler then claims due deliveries (`FOR UPDATE SKIP LOCKED`) and hands them
-- to a bounded worker pool. Every HTTP attempt is also a `delivery_attempts` row.

-- Secret rotation: after a rotation the old secret keeps signing (a second signature in
-- `webhook-signature`, space-separated) until `previous_secret_expires_at`, so a merchant
-- can roll its verifier without losing events.
-- `failing_since`: start of the current run of failed attempts (NULL after any success); an
-- endpoint failing for `dispatcher.disable_after_failing_secs` is disabled.
ALTER TABLE webhook_endpoints
    ADD COLUMN previous_secret             TEXT CHECK (previous_secret LIKE 'whsec_%'),
    ADD COLUMN previous_secret_expires_at  TIMESTAMPTZ,
    ADD COLUMN failing_since               TIMESTAMPTZ,
    -- Why the endpoint was disabled by the dispatcher (`gone` for a 410, `failing`); NULL
    -- when the merchant deleted it or it is enabled.
    ADD COLUMN disabled_reason             TEXT;

-- The merchant's default signing secret: signs deliveries to a transaction's own
-- `callback_url` (registered endpoints have their own secrets). Created on first use, by the
-- first event with a `callback_url`, or by whoever asks for it first (the API can show it).
CREATE TABLE merchant_webhook_secrets (
    merchant_id                 UUID PRIMARY KEY REFERENCES merchants (id),
    secret                      TEXT NOT NULL CHECK (secret LIKE 'whsec_%'),
    previous_secret             TEXT CHECK (previous_secret LIKE 'whsec_%'),
    previous_secret_expires_at  TIMESTAMPTZ,
    created_at                  TIMESTAMPTZ NOT NULL DEFAULT now(),
    rotated_at                  TIMESTAMPTZ
);

-- One event told to a merchant. `id` is a UUIDv5 of (transaction, terminal status), so a
-- re-emitted `transactions.completed` message finds the event already there. `payload` is
-- `json` (not `jsonb`) so the exact bytes that are signed and sent are kept.
CREATE TABLE webhook_events (
    id              UUID PRIMARY KEY,
    merchant_id     UUID NOT NULL REFERENCES merchants (id),
    transaction_id  UUID NOT NULL REFERENCES transactions (id),
    event_type      TEXT NOT NULL CHECK (event_type IN ('transaction.succeeded', 'transaction.failed')),
    payload         JSON NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX webhook_events_merchant ON webhook_events (merchant_id, id);
CREATE INDEX webhook_events_transaction ON webhook_events (transaction_id);

-- The delivery schedule: one row per event × destination (× redelivery generation).
--   pending     waiting for `next_attempt_at`;
--   delivering  claimed by a worker until `locked_until` (a crashed worker's row is claimed
--               again once the lease runs out);
--   succeeded   a 2xx was received;
--   failed      the retry schedule is exhausted, or the URL is refused by the SSRF guard;
--   disabled    the endpoint answered 410, was disabled, or was deleted.
-- `destination` names the bulkhead: `we_<hex>` for an endpoint, `callback:<host:port>` for a
-- transaction's `callback_url`.
CREATE TABLE webhook_deliveries (
    id                UUID PRIMARY KEY,
    event_id          UUID NOT NULL REFERENCES webhook_events (id),
    merchant_id       UUID NOT NULL REFERENCES merchants (id),
    transaction_id    UUID NOT NULL REFERENCES transactions (id),
    endpoint_id       UUID REFERENCES webhook_endpoints (id),
    url               TEXT NOT NULL,
    destination       TEXT NOT NULL,
    -- 0 for the first delivery of the event; n for its n-th redelivery (replay).
    generation        INTEGER NOT NULL DEFAULT 0 CHECK (generation >= 0),
    state             TEXT NOT NULL DEFAULT 'pending'
                        CHECK (state IN ('pending', 'delivering', 'succeeded', 'failed', 'disabled')),
    -- Attempts started (a claim counts one; it is also the fencing token of a lease).
    attempts          INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    next_attempt_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    locked_until      TIMESTAMPTZ,
    last_status_code  INTEGER,
    last_error        TEXT,
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    completed_at      TIMESTAMPTZ,
    UNIQUE (event_id, destination, generation)
);
-- The scheduler's two scans: due retries, and leases that ran out.
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE state = 'pending';
CREATE INDEX webhook_deliveries_leased ON webhook_deliveries (locked_until) WHERE state = 'delivering';
CREATE INDEX webhook_deliveries_event ON webhook_deliveries (event_id);
CREATE INDEX webhook_deliveries_endpoint_open ON webhook_deliveries (endpoint_id)
    WHERE state IN ('pending', 'delivering');
