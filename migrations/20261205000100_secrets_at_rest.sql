-- Webhook signing secrets sealed at rest (issue 17; core/src/keyring.rs).
--
-- Every value of `webhook_endpoints.secret/previous_secret` and
-- `merchant_webhook_secrets.secret/previous_secret` is now an AES-256-GCM envelope,
-- `v1:<key id>:<base64 nonce||ciphertext>`, bound to its table, column and row; the key is
-- in the configuration (`[secrets]`), never in the database. The CHECKs admitting `whsec_…`
-- are replaced by CHECKs admitting only envelopes.
--
-- Postgres cannot seal (it has no key), so rows written in clear before this migration are
-- sealed by `paygate migrate` right after it applies the migrations (the deploy step,
-- before any service starts), which then VALIDATEs these constraints: from then on the
-- tables provably hold no clear value. Until then the constraints are NOT VALID: they
-- already refuse every new clear write, and the services refuse to read a clear value as a
-- secret (an error naming `paygate migrate`), so no clear value is ever silently used.
ALTER TABLE webhook_endpoints
    DROP CONSTRAINT webhook_endpoints_secret_check,
    DROP CONSTRAINT webhook_endpoints_previous_secret_check,
    ADD CONSTRAINT webhook_endpoints_secret_sealed CHECK (secret LIKE 'v1:%') NOT VALID,
    ADD CONSTRAINT webhook_endpoints_previous_secret_sealed CHECK (previous_secret LIKE 'v1:%') NOT VALID;

ALTER TABLE merchant_webhook_secrets
    DROP CONSTRAINT merchant_webhook_secrets_secret_check,
    DROP CONSTRAINT merchant_webhook_secrets_previous_secret_check,
    ADD CONSTRAINT merchant_webhook_secrets_secret_sealed CHECK (secret LIKE 'v1:%') NOT VALID,
    ADD CONSTRAINT merchant_webhook_secrets_previous_secret_sealed CHECK (previous_secret LIKE 'v1:%') NOT VALID;

-- On a fresh database there is nothing to seal: validate at once.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM webhook_endpoints) AND NOT EXISTS (SELECT 1 FROM merchant_webhook_secrets) THEN
        ALTER TABLE webhook_endpoints VALIDATE CONSTRAINT webhook_endpoints_secret_sealed;
        ALTER TABLE webhook_endpoints VALIDATE CONSTRAINT webhook_endpoints_previous_secret_sealed;
        ALTER TABLE merchant_webhook_secrets VALIDATE CONSTRAINT merchant_webhook_secrets_secret_sealed;
        ALTER TABLE merchant_webhook_secrets VALIDATE CONSTRAINT merchant_webhook_secrets_previous_secret_sealed;
    END IF;
END $$;
