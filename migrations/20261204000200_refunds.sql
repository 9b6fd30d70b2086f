-- Refunds (issue 16): money a merchant gives back to the customer of a succeeded deposit.
--
-- Why triggers, as for the ledger: the two rules that keep money right must hold whichever
-- writer inserts or changes a refund, and under any concurrency.
--   1. Only a succeeded deposit is refundable, and the refunds of a payment that have not
--      failed never add up to more than it. Checked in the INSERT (a BEFORE trigger that
--      locks the payment's row FOR UPDATE), so concurrent refunds of one payment queue on
--      that row and each sees the ones committed before it: never check-then-insert.
--   2. The money leaves the merchant's balance: a hold at creation (refused when the
--      available balance is short), posted when the refund succeeds (merchant debited, the
--      gateway's clearing account credited), voided when it fails, in the commit of the
--      refund's state change.
-- Refusals raise, so nothing (refund, idempotency key, outbox row) is written:
--   PGL01 balance_insufficient (as for withdrawals), PGL04 transaction_not_refundable,
--   PGL05 amount_too_large (DETAIL: what is left to refund).

CREATE TABLE refunds (
    id                  UUID PRIMARY KEY,
    transaction_id      UUID NOT NULL REFERENCES transactions (id),
    merchant_id         UUID NOT NULL REFERENCES merchants (id),
    amount              BIGINT NOT NULL CHECK (amount > 0),
    currency            CHAR(3) NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    status              TEXT NOT NULL CHECK (status IN ('pending', 'submitted', 'succeeded', 'failed')),
    version             BIGINT NOT NULL,
    attempts            INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    next_attempt_at     TIMESTAMPTZ,
    provider_reference  TEXT CHECK (provider_reference IS NULL OR length(provider_reference) BETWEEN 1 AND 255),
    failure_code        TEXT,
    failure_message     TEXT,
    reason              TEXT CHECK (reason IS NULL OR length(reason) <= 500),
    created_at          TIMESTAMPTZ NOT NULL,
    updated_at          TIMESTAMPTZ NOT NULL
);
CREATE INDEX refunds_transaction ON refunds (transaction_id, id);
CREATE INDEX refunds_provider_reference ON refunds (provider_reference) WHERE provider_reference IS NOT NULL;
-- The retry scan: pending refunds whose next provider call is due.
CREATE INDEX refunds_due ON refunds (next_attempt_at) WHERE status = 'pending';

-- A refund's hold on its merchant's account (ledger_holds is keyed by transaction_id, and a
-- payment may have several refunds). Resolved exactly once, like a withdrawal's.
CREATE TABLE refund_holds (
    refund_id    UUID PRIMARY KEY REFERENCES refunds (id),
    account_id   BIGINT NOT NULL REFERENCES ledger_accounts (id),
    amount       BIGINT NOT NULL CHECK (amount > 0),
    state        TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'posted', 'voided')),
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    resolved_at  TIMESTAMPTZ,
    CHECK ((state = 'pending') = (resolved_at IS NULL))
);
CREATE INDEX refund_holds_pending ON refund_holds (account_id) WHERE state = 'pending';
CREATE TRIGGER refund_holds_resolved_once BEFORE DELETE OR UPDATE ON refund_holds
    FOR EACH ROW WHEN (OLD.state <> 'pending') EXECUTE FUNCTION ledger_immutable();

-- A refund's posting names the refund (a payment posts once by transaction_id; its refunds
-- post once each by refund_id).
ALTER TABLE ledger_transfers DROP CONSTRAINT ledger_transfers_kind_check;
ALTER TABLE ledger_transfers ADD CONSTRAINT ledger_transfers_kind_check
    CHECK (kind IN ('deposit', 'withdrawal', 'top_up', 'refund'));
ALTER TABLE ledger_transfers ADD COLUMN refund_id UUID UNIQUE REFERENCES refunds (id);
ALTER TABLE ledger_transfers ADD CONSTRAINT ledger_transfers_refund_named
    CHECK ((kind = 'refund') = (refund_id IS NOT NULL AND transaction_id IS NULL));

-- Rule 1, and the amount when the request left it out (all that is left). The payment's row
-- lock is held to the end of the inserting transaction, which is what serialises refunds of
-- one payment; plpgsql takes a new snapshot per statement under READ COMMITTED, so the sum
-- below sees every refund committed before the lock was granted.
CREATE FUNCTION refund_on_insert() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    payment transactions%ROWTYPE;
    taken BIGINT;
    remaining BIGINT;
BEGIN
    SELECT * INTO payment FROM transactions WHERE id = NEW.transaction_id FOR UPDATE;
    IF payment.id IS NULL OR payment.merchant_id <> NEW.merchant_id
       OR payment.kind <> 'deposit' OR payment.status <> 'succeeded' THEN
        RAISE EXCEPTION 'transaction not refundable' USING ERRCODE = 'PGL04';
    END IF;
    SELECT coalesce(sum(amount), 0) INTO taken FROM refunds
     WHERE transaction_id = NEW.transaction_id AND status <> 'failed';
    remaining := payment.amount - taken;
    IF NEW.amount IS NULL THEN
        NEW.amount := remaining;
    END IF;
    IF remaining <= 0 OR NEW.amount > remaining THEN
        RAISE EXCEPTION 'amount too large' USING ERRCODE = 'PGL05', DETAIL = greatest(remaining, 0)::text;
    END IF;
    NEW.currency := payment.currency;
    RETURN NEW;
END $$;
CREATE TRIGGER refunds_check BEFORE INSERT ON refunds
    FOR EACH ROW EXECUTE FUNCTION refund_on_insert();

-- Rule 2 at creation: the hold, on the merchant's account row in one conditional update
-- (that row's lock serialises it with payouts, as in ledger_on_accept).
CREATE FUNCTION refund_hold() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE account BIGINT;
BEGIN
    UPDATE ledger_accounts SET reserved = reserved + NEW.amount
     WHERE kind = 'merchant' AND merchant_id = NEW.merchant_id AND currency = NEW.currency
       AND balance - reserved >= NEW.amount
    RETURNING id INTO account;
    IF account IS NULL THEN
        RAISE EXCEPTION 'balance insufficient' USING ERRCODE = 'PGL01';
    END IF;
    INSERT INTO refund_holds (refund_id, account_id, amount) VALUES (NEW.id, account, NEW.amount);
    RETURN NULL;
END $$;
CREATE TRIGGER refunds_hold AFTER INSERT ON refunds
    FOR EACH ROW EXECUTE FUNCTION refund_hold();

-- Posts a refund's pending hold: the merchant is debited and the gateway's clearing account
-- credited (the deposit's posting, reversed). Exactly once: NULL when not pending.
CREATE FUNCTION refund_post_hold(p_refund UUID, p_gateway TEXT)
RETURNS BIGINT LANGUAGE plpgsql AS $$
DECLARE
    hold refund_holds%ROWTYPE;
    acct ledger_accounts%ROWTYPE;
    transfer BIGINT;
BEGIN
    UPDATE refund_holds SET state = 'posted', resolved_at = now()
     WHERE refund_id = p_refund AND state = 'pending'
    RETURNING * INTO hold;
    IF hold.refund_id IS NULL THEN
        RETURN NULL;
    END IF;
    UPDATE ledger_accounts SET balance = balance - hold.amount, reserved = reserved - hold.amount
     WHERE id = hold.account_id
    RETURNING * INTO acct;
    INSERT INTO ledger_transfers (kind, refund_id, merchant_id, amount, currency)
    VALUES ('refund', p_refund, acct.merchant_id, hold.amount, acct.currency)
    RETURNING id INTO transfer;
    INSERT INTO ledger_entries (transfer_id, account_id, amount, balance_after)
    VALUES (transfer, acct.id, -hold.amount, acct.balance),
           (transfer, ledger_system_account('clearing', p_gateway, acct.currency), hold.amount, NULL);
    RETURN transfer;
END $$;

-- Voids a refund's pending hold: the amount is available again. Exactly once.
CREATE FUNCTION refund_void_hold(p_refund UUID)
RETURNS BOOLEAN LANGUAGE plpgsql AS $$
DECLARE hold refund_holds%ROWTYPE;
BEGIN
    UPDATE refund_holds SET state = 'voided', resolved_at = now()
     WHERE refund_id = p_refund AND state = 'pending'
    RETURNING * INTO hold;
    IF hold.refund_id IS NULL THEN
        RETURN FALSE;
    END IF;
    UPDATE ledger_accounts SET reserved = reserved - hold.amount WHERE id = hold.account_id;
    RETURN TRUE;
END $$;

-- Money follows the refund's state machine (`succeeded` and `failed` are terminal).
CREATE FUNCTION refund_on_final() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE gateway TEXT;
BEGIN
    IF NEW.status = 'succeeded' THEN
        SELECT coalesce(routed_gateway, transactions.gateway, 'unrouted') INTO gateway
          FROM transactions WHERE id = NEW.transaction_id;
        PERFORM refund_post_hold(NEW.id, gateway);
    ELSE
        PERFORM refund_void_hold(NEW.id);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER refunds_ledger_final AFTER UPDATE OF status ON refunds
    FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status AND NEW.status IN ('succeeded', 'failed'))
    EXECUTE FUNCTION refund_on_final();

-- The merchant is told how each refund ended.
ALTER TABLE webhook_events DROP CONSTRAINT webhook_events_event_type_check;
ALTER TABLE webhook_events ADD CONSTRAINT webhook_events_event_type_check CHECK (event_type IN
    ('transaction.succeeded', 'transaction.failed', 'transaction.unresolved',
     'transaction.requires_action', 'refund.succeeded', 'refund.failed'));

-- Refund callbacks settled, one row per provider event: the unique (gateway, event id) makes
-- a duplicate a no-op, as callback_log does for payments (whose columns are a payment's).
CREATE TABLE refund_callback_log (
    id                  BIGSERIAL PRIMARY KEY,
    gateway             TEXT NOT NULL,
    provider_event_id   TEXT NOT NULL,
    refund_id           UUID NOT NULL REFERENCES refunds (id),
    reported_status     TEXT NOT NULL CHECK (reported_status IN ('pending', 'succeeded', 'failed')),
    provider_reference  TEXT,
    reported_amount     BIGINT NOT NULL,
    reported_currency   CHAR(3) NOT NULL,
    outcome             TEXT NOT NULL,
    status_before       TEXT NOT NULL,
    version_before      BIGINT NOT NULL,
    created_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (gateway, provider_event_id)
);
CREATE INDEX refund_callback_log_refund ON refund_callback_log (refund_id, id);
