-- The ledger (issue 15): double-entry accounts that fund payouts, two-phase holds, limits per
-- merchant and currency, gateways per merchant, and scoped API keys.
--
-- Why triggers: money must follow the state machine in the same commit as the state change,
-- whichever writer changes it (payment processor, callback processor, reconciliation, a
-- person's resolution). A trigger on `transactions` is the one place that rule lives; no
-- writer can change a payment's state without its ledger entries, and none has to remember to.
-- The trigger functions are short and each does one thing; docs/ARCHITECTURE.md ("Ledger")
-- describes the model.

-- Accounts. `balance` is posted money (the sum of the account's entries, credits positive);
-- `reserved` is the sum of its pending holds. Only merchant accounts keep these running
-- figures (their available balance is checked atomically against every payout); system
-- accounts (a clearing account per gateway and currency, one funding account per currency)
-- only receive entries, so every settlement through one gateway does not queue on one row.
CREATE TABLE ledger_accounts (
    id           BIGSERIAL PRIMARY KEY,
    kind         TEXT NOT NULL CHECK (kind IN ('merchant', 'clearing', 'funding')),
    merchant_id  UUID REFERENCES merchants (id),
    gateway      TEXT,
    currency     CHAR(3) NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    balance      BIGINT NOT NULL DEFAULT 0,
    reserved     BIGINT NOT NULL DEFAULT 0,
    -- The daily payout limit's running figure: withdrawals accepted on `payout_day` (UTC)
    -- that have not failed.
    payout_day   DATE,
    payout_used  BIGINT NOT NULL DEFAULT 0,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    CHECK ((kind = 'merchant') = (merchant_id IS NOT NULL)),
    CHECK ((kind = 'clearing') = (gateway IS NOT NULL)),
    -- A merchant's available balance is never negative: the database refuses the write.
    CONSTRAINT ledger_available_not_negative
        CHECK (kind <> 'merchant' OR (reserved >= 0 AND balance - reserved >= 0)),
    UNIQUE NULLS NOT DISTINCT (kind, merchant_id, gateway, currency)
);

-- A posting: one movement of money, two entries that sum to zero. It names the payment it
-- belongs to, or (a top-up) the operator's reference.
CREATE TABLE ledger_transfers (
    id              BIGSERIAL PRIMARY KEY,
    kind            TEXT NOT NULL CHECK (kind IN ('deposit', 'withdrawal', 'top_up')),
    transaction_id  UUID REFERENCES transactions (id),
    merchant_id     UUID NOT NULL REFERENCES merchants (id),
    reference       TEXT CHECK (length(reference) BETWEEN 1 AND 200),
    amount          BIGINT NOT NULL CHECK (amount > 0),
    currency        CHAR(3) NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    CHECK ((kind = 'top_up') = (reference IS NOT NULL AND transaction_id IS NULL)),
    -- A payment posts once; a top-up reference funds once.
    UNIQUE (transaction_id),
    UNIQUE (merchant_id, reference)
);

CREATE TABLE ledger_entries (
    id             BIGSERIAL PRIMARY KEY,
    transfer_id    BIGINT NOT NULL REFERENCES ledger_transfers (id),
    account_id     BIGINT NOT NULL REFERENCES ledger_accounts (id),
    amount         BIGINT NOT NULL CHECK (amount <> 0),  -- credit > 0, debit < 0
    -- The merchant account's posted balance after this entry (NULL on system accounts,
    -- which keep no running balance).
    balance_after  BIGINT,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX ledger_entries_account ON ledger_entries (account_id, id DESC);
CREATE INDEX ledger_entries_transfer ON ledger_entries (transfer_id);

-- Two-phase holds (TigerBeetle's pending transfers): taken when a withdrawal is accepted,
-- then posted (wholly or in part) or voided exactly once. A hold with `expires_at` that is
-- still pending at that moment may be expired; withdrawal holds have none, because a
-- provider may execute a payout long after we asked (an unresolved withdrawal keeps its hold).
CREATE TABLE ledger_holds (
    transaction_id  UUID PRIMARY KEY REFERENCES transactions (id),
    account_id      BIGINT NOT NULL REFERENCES ledger_accounts (id),
    amount          BIGINT NOT NULL CHECK (amount > 0),
    state           TEXT NOT NULL DEFAULT 'pending'
                    CHECK (state IN ('pending', 'posted', 'voided', 'expired')),
    posted_amount   BIGINT CHECK (posted_amount > 0 AND posted_amount <= amount),
    payout_day      DATE NOT NULL,
    expires_at      TIMESTAMPTZ,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    resolved_at     TIMESTAMPTZ,
    CHECK ((state = 'posted') = (posted_amount IS NOT NULL)),
    CHECK ((state = 'pending') = (resolved_at IS NULL))
);
CREATE INDEX ledger_holds_pending ON ledger_holds (account_id) WHERE state = 'pending';

-- When the ledger began: payments that finished before it are outside it (`paygate ledger
-- check` does not expect entries for them).
CREATE TABLE ledger_epoch (
    singleton   BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (singleton),
    started_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
INSERT INTO ledger_epoch DEFAULT VALUES;

-- Limits per merchant and currency (NULL: none).
CREATE TABLE merchant_limits (
    merchant_id         UUID NOT NULL REFERENCES merchants (id),
    currency            CHAR(3) NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    max_amount          BIGINT CHECK (max_amount > 0),
    daily_payout_limit  BIGINT CHECK (daily_payout_limit > 0),
    PRIMARY KEY (merchant_id, currency)
);

-- The gateways a merchant may use; NULL means every configured gateway.
ALTER TABLE merchants ADD COLUMN enabled_gateways TEXT[];

-- What a key may do. Keys that exist keep every scope.
ALTER TABLE api_keys ADD COLUMN scopes TEXT[] NOT NULL
    DEFAULT ARRAY['payments:write', 'payouts:write', 'read', 'webhooks:manage'];
ALTER TABLE api_keys ADD CONSTRAINT api_keys_scopes_known CHECK (
    cardinality(scopes) >= 1 AND
    scopes <@ ARRAY['payments:write', 'payouts:write', 'read', 'webhooks:manage']);

-- Entries, transfers and resolved holds are history: never changed, never removed.
CREATE FUNCTION ledger_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'ledger % rows are immutable', TG_TABLE_NAME USING ERRCODE = 'PGL09';
END $$;
CREATE TRIGGER ledger_entries_immutable BEFORE UPDATE OR DELETE ON ledger_entries
    FOR EACH ROW EXECUTE FUNCTION ledger_immutable();
CREATE TRIGGER ledger_transfers_immutable BEFORE UPDATE OR DELETE ON ledger_transfers
    FOR EACH ROW EXECUTE FUNCTION ledger_immutable();
CREATE TRIGGER ledger_holds_resolved_once BEFORE DELETE OR UPDATE ON ledger_holds
    FOR EACH ROW WHEN (OLD.state <> 'pending') EXECUTE FUNCTION ledger_immutable();

-- The system account (clearing per gateway, funding) for a currency, opened on first use.
-- `DO NOTHING` then a second read, never `DO UPDATE`: that would lock the row exclusively, and
-- a concurrent posting holding its merchant's row while it checks its entry's foreign key on
-- this account would deadlock with us (seen with 200 payouts settling at once).
CREATE FUNCTION ledger_system_account(p_kind TEXT, p_gateway TEXT, p_currency CHAR(3))
RETURNS BIGINT LANGUAGE plpgsql AS $$
DECLARE account BIGINT;
BEGIN
    SELECT id INTO account FROM ledger_accounts
     WHERE kind = p_kind AND gateway IS NOT DISTINCT FROM p_gateway AND currency = p_currency;
    IF account IS NULL THEN
        INSERT INTO ledger_accounts (kind, gateway, currency) VALUES (p_kind, p_gateway, p_currency)
        ON CONFLICT (kind, merchant_id, gateway, currency) DO NOTHING
        RETURNING id INTO account;
    END IF;
    IF account IS NULL THEN
        -- Another transaction opened it first (the insert waited for its commit).
        SELECT id INTO account FROM ledger_accounts
         WHERE kind = p_kind AND gateway IS NOT DISTINCT FROM p_gateway AND currency = p_currency;
    END IF;
    RETURN account;
END $$;

-- Posts one transfer: `amount` from the system account `source` to the merchant (negative
-- `amount`: from the merchant to `source`). The merchant account's running balance moves
-- with its entry; `release` is taken off its reserved figure in the same row update (a hold
-- being posted). Returns the transfer id.
CREATE FUNCTION ledger_post(
    p_kind TEXT, p_transaction UUID, p_reference TEXT, p_merchant UUID, p_currency CHAR(3),
    p_amount BIGINT, p_source BIGINT, p_release BIGINT)
RETURNS BIGINT LANGUAGE plpgsql AS $$
DECLARE
    transfer BIGINT;
    account BIGINT;
    after BIGINT;
BEGIN
    UPDATE ledger_accounts SET balance = balance + p_amount, reserved = reserved - p_release
     WHERE kind = 'merchant' AND merchant_id = p_merchant AND currency = p_currency
    RETURNING id, balance INTO account, after;
    IF account IS NULL THEN
        -- A first credit opens the account. (CHECK constraints apply to the row proposed for
        -- insertion even when it conflicts, so a debit never goes this way: it has a hold,
        -- hence an account.)
        INSERT INTO ledger_accounts AS a (kind, merchant_id, currency, balance, reserved)
        VALUES ('merchant', p_merchant, p_currency, p_amount, -p_release)
        ON CONFLICT (kind, merchant_id, gateway, currency)
            DO UPDATE SET balance = a.balance + p_amount, reserved = a.reserved - p_release
        RETURNING id, balance INTO account, after;
    END IF;
    INSERT INTO ledger_transfers (kind, transaction_id, merchant_id, reference, amount, currency)
    VALUES (p_kind, p_transaction, p_merchant, p_reference, abs(p_amount), p_currency)
    RETURNING id INTO transfer;
    INSERT INTO ledger_entries (transfer_id, account_id, amount, balance_after)
    VALUES (transfer, account, p_amount, after), (transfer, p_source, -p_amount, NULL);
    RETURN transfer;
END $$;

-- The limits every new payment meets, and for a withdrawal its hold, taken on the merchant's
-- account row in one conditional update: that row's lock is what serialises concurrent
-- payouts of one merchant, and the condition is re-checked on the locked row, so a thousand
-- concurrent requests can never reserve more than is available. Refusals raise (the insert,
-- its idempotency key and its outbox row are then not written at all):
--   PGL01 balance_insufficient, PGL02 amount over max_amount, PGL03 daily payout limit.
CREATE FUNCTION ledger_on_accept() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    lim merchant_limits%ROWTYPE;
    today DATE := (now() AT TIME ZONE 'UTC')::date;
    account BIGINT;
    found_account ledger_accounts%ROWTYPE;
BEGIN
    SELECT * INTO lim FROM merchant_limits
     WHERE merchant_id = NEW.merchant_id AND currency = NEW.currency;
    IF lim.max_amount IS NOT NULL AND NEW.amount > lim.max_amount THEN
        RAISE EXCEPTION 'amount over limit' USING ERRCODE = 'PGL02', DETAIL = lim.max_amount::text;
    END IF;
    IF NEW.kind <> 'withdrawal' THEN
        RETURN NULL;
    END IF;
    UPDATE ledger_accounts SET
        reserved = reserved + NEW.amount,
        payout_used = (CASE WHEN payout_day = today THEN payout_used ELSE 0 END) + NEW.amount,
        payout_day = today
     WHERE kind = 'merchant' AND merchant_id = NEW.merchant_id AND currency = NEW.currency
       AND balance - reserved >= NEW.amount
       AND (lim.daily_payout_limit IS NULL OR
            (CASE WHEN payout_day = today THEN payout_used ELSE 0 END) + NEW.amount
                <= lim.daily_payout_limit)
    RETURNING id INTO account;
    IF account IS NULL THEN
        SELECT * INTO found_account FROM ledger_accounts
         WHERE kind = 'merchant' AND merchant_id = NEW.merchant_id AND currency = NEW.currency;
        IF found_account.id IS NOT NULL AND found_account.balance - found_account.reserved >= NEW.amount THEN
            RAISE EXCEPTION 'daily payout limit' USING ERRCODE = 'PGL03',
                DETAIL = lim.daily_payout_limit::text;
        END IF;
        RAISE EXCEPTION 'balance insufficient' USING ERRCODE = 'PGL01';
    END IF;
    INSERT INTO ledger_holds (transaction_id, account_id, amount, payout_day)
    VALUES (NEW.id, account, NEW.amount, today);
    RETURN NULL;
END $$;
CREATE TRIGGER transactions_ledger_accept AFTER INSERT ON transactions
    FOR EACH ROW EXECUTE FUNCTION ledger_on_accept();

-- Posts a pending hold: `amount` (at most the hold's) leaves the merchant account for the
-- gateway's clearing account; the rest of the hold is released. Exactly once: a hold that
-- is not pending is left alone and NULL returned.
CREATE FUNCTION ledger_post_hold(p_transaction UUID, p_amount BIGINT, p_gateway TEXT)
RETURNS BIGINT LANGUAGE plpgsql AS $$
DECLARE
    hold ledger_holds%ROWTYPE;
    acct ledger_accounts%ROWTYPE;
BEGIN
    UPDATE ledger_holds SET state = 'posted', posted_amount = p_amount, resolved_at = now()
     WHERE transaction_id = p_transaction AND state = 'pending'
    RETURNING * INTO hold;
    IF hold.transaction_id IS NULL THEN
        RETURN NULL;
    END IF;
    SELECT * INTO acct FROM ledger_accounts WHERE id = hold.account_id;
    -- Whatever of the hold is not posted goes back to the day's payout allowance.
    IF hold.amount > p_amount THEN
        UPDATE ledger_accounts SET payout_used = greatest(payout_used - (hold.amount - p_amount), 0)
         WHERE id = acct.id AND payout_day = hold.payout_day;
    END IF;
    RETURN ledger_post('withdrawal', p_transaction, NULL, acct.merchant_id, acct.currency,
                       -p_amount, ledger_system_account('clearing', p_gateway, acct.currency),
                       hold.amount);
END $$;

-- Voids a pending hold (`voided`, or `expired` when its time ran out): the whole amount is
-- available again. Exactly once, as above; returns whether a hold was resolved.
CREATE FUNCTION ledger_void_hold(p_transaction UUID, p_state TEXT)
RETURNS BOOLEAN LANGUAGE plpgsql AS $$
DECLARE hold ledger_holds%ROWTYPE;
BEGIN
    UPDATE ledger_holds SET state = p_state, resolved_at = now()
     WHERE transaction_id = p_transaction AND state = 'pending'
    RETURNING * INTO hold;
    IF hold.transaction_id IS NULL THEN
        RETURN FALSE;
    END IF;
    UPDATE ledger_accounts SET
        reserved = reserved - hold.amount,
        payout_used = CASE WHEN payout_day = hold.payout_day
                           THEN greatest(payout_used - hold.amount, 0) ELSE payout_used END
     WHERE id = hold.account_id;
    RETURN TRUE;
END $$;

-- Money follows the state machine: a deposit that succeeds credits the merchant from the
-- gateway's clearing account; a withdrawal that succeeds posts its hold; one that fails voids
-- it. `succeeded` and `failed` are terminal, so this runs once per payment.
CREATE FUNCTION ledger_on_final() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE gateway TEXT := coalesce(NEW.routed_gateway, NEW.gateway, 'unrouted');
BEGIN
    IF NEW.kind = 'deposit' AND NEW.status = 'succeeded' THEN
        PERFORM ledger_post('deposit', NEW.id, NULL, NEW.merchant_id, NEW.currency, NEW.amount,
                            ledger_system_account('clearing', gateway, NEW.currency), 0);
    ELSIF NEW.kind = 'withdrawal' AND NEW.status = 'succeeded' THEN
        PERFORM ledger_post_hold(NEW.id, NEW.amount, gateway);
    ELSIF NEW.kind = 'withdrawal' AND NEW.status = 'failed' THEN
        PERFORM ledger_void_hold(NEW.id, 'voided');
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER transactions_ledger_final AFTER UPDATE OF status ON transactions
    FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status AND NEW.status IN ('succeeded', 'failed'))
    EXECUTE FUNCTION ledger_on_final();

-- Funds a merchant without a deposit (`paygate ledger top-up`), once per reference.
CREATE FUNCTION ledger_top_up(p_merchant UUID, p_currency CHAR(3), p_amount BIGINT, p_reference TEXT)
RETURNS BIGINT LANGUAGE plpgsql AS $$
BEGIN
    RETURN ledger_post('top_up', NULL, p_reference, p_merchant, p_currency, p_amount,
                       ledger_system_account('funding', NULL, p_currency), 0);
END $$;
