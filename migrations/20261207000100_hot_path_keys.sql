-- Issue 18: foreign keys that cannot fail, taken off the hot path.
--
-- A foreign key is an after-row trigger: every insert of a referencing row runs a lookup of the
-- referenced row with a lock (`SELECT 1 … FOR KEY SHARE`), which also writes WAL when it marks
-- that row locked. A payment paid for 22 of them (BENCHMARKS.md, issue 18: ten checks of its
-- `transactions` row alone), and the trigger machinery around them is part of the quarter of
-- Postgres's CPU that after-row triggers take.
--
-- The keys dropped here are those whose referencing row is written from the very row it names,
-- in the same statement, so the check cannot fail:
--   transaction_history.transaction_id     NEW.id, in the trigger on `transactions`
--   ledger_holds.transaction_id, account_id NEW.id, and the account row the trigger just updated
--   ledger_transfers.transaction_id, merchant_id
--                                          NEW.id / the account's merchant, in the ledger's
--                                          functions, which a trigger on `transactions` calls
--   ledger_entries.transfer_id, account_id the transfer inserted by the statement before, and
--                                          accounts the same function updated or looked up
--   callback_log.transaction_id            selected from the row the same statement locks
--   idempotency_keys.transaction_id        the payment the same statement inserts
-- What such a key still guarded against is the referenced row going away. Payments, ledger
-- accounts and transfers are never deleted: transfers were already immutable, and the two
-- triggers below refuse DELETE and TRUNCATE of the other two (they fire only then, never on the
-- hot path). `paygate ledger check` also verifies that every entry, hold and transfer names rows
-- that exist. Keys whose value comes from outside the statement stay (a webhook event's payment
-- comes from a Kafka message; a transfer's refund; every row's merchant on `transactions`).
ALTER TABLE transaction_history DROP CONSTRAINT transaction_history_transaction_id_fkey;
ALTER TABLE ledger_holds DROP CONSTRAINT ledger_holds_transaction_id_fkey,
                         DROP CONSTRAINT ledger_holds_account_id_fkey;
ALTER TABLE ledger_transfers DROP CONSTRAINT ledger_transfers_transaction_id_fkey,
                             DROP CONSTRAINT ledger_transfers_merchant_id_fkey;
ALTER TABLE ledger_entries DROP CONSTRAINT ledger_entries_transfer_id_fkey,
                           DROP CONSTRAINT ledger_entries_account_id_fkey;
ALTER TABLE callback_log DROP CONSTRAINT callback_log_transaction_id_fkey;
ALTER TABLE idempotency_keys DROP CONSTRAINT idempotency_keys_transaction_id_fkey;

CREATE FUNCTION never_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% rows are never deleted: other rows name them without a foreign key', TG_TABLE_NAME
        USING ERRCODE = 'restrict_violation';
END $$;
CREATE TRIGGER transactions_never_deleted BEFORE DELETE ON transactions
    FOR EACH STATEMENT EXECUTE FUNCTION never_deleted();
CREATE TRIGGER transactions_never_truncated BEFORE TRUNCATE ON transactions
    FOR EACH STATEMENT EXECUTE FUNCTION never_deleted();
CREATE TRIGGER ledger_accounts_never_deleted BEFORE DELETE ON ledger_accounts
    FOR EACH STATEMENT EXECUTE FUNCTION never_deleted();
CREATE TRIGGER ledger_accounts_never_truncated BEFORE TRUNCATE ON ledger_accounts
    FOR EACH STATEMENT EXECUTE FUNCTION never_deleted();
