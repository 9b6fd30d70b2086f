-- Merchant webhook endpoints and the log of delivery attempts made to them.

-- `secret` is the endpoint's signing secret (`whsec_…`). It is stored as given because the
-- dispatcher signs every delivery with it (HMAC needs the secret itself, unlike an API key,
-- which is only ever compared and so is stored as a hash). It is returned to the merchant
-- once, at creation, and never logged.
CREATE TABLE webhook_endpoints (
    id           UUID PRIMARY KEY,
    merchant_id  UUID NOT NULL REFERENCES merchants (id),
    url          TEXT NOT NULL CHECK (length(url) BETWEEN 1 AND 2048),
    secret       TEXT NOT NULL CHECK (secret LIKE 'whsec_%'),
    description  TEXT CHECK (length(description) <= 500),
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- Set when the merchant deletes the endpoint (or the dispatcher disables it); a disabled
    -- endpoint receives nothing. Rows are kept so delivery attempts keep their endpoint.
    disabled_at  TIMESTAMPTZ
);
CREATE INDEX webhook_endpoints_merchant_enabled ON webhook_endpoints (merchant_id, id)
    WHERE disabled_at IS NULL;

-- One row per HTTP attempt to deliver one event; filled by the callback dispatcher, read by
-- `GET /v1/transactions/{id}/deliveries`. `endpoint_id` is NULL for a delivery to the
-- transaction's own `callback_url`.
CREATE TABLE delivery_attempts (
    id                UUID PRIMARY KEY,
    event_id          UUID NOT NULL,
    transaction_id    UUID NOT NULL REFERENCES transactions (id),
    endpoint_id       UUID REFERENCES webhook_endpoints (id),
    url               TEXT NOT NULL,
    attempt           INTEGER NOT NULL CHECK (attempt >= 1),
    status_code       INTEGER,
    latency_ms        INTEGER,
    response_excerpt  TEXT,
    error             TEXT,
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX delivery_attempts_transaction ON delivery_attempts (transaction_id, created_at);
CREATE INDEX delivery_attempts_event ON delivery_attempts (event_id, endpoint_id);
