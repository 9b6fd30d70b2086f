-- Issue 18: a finished payment's ledger posting runs when its transaction commits, not when its
-- status changes.
--
-- Why: the posting updates the merchant's account row, and that row's lock is held from the
-- update until the commit. The callback processor writes a merchant's settlements by group
-- commit (docs/ARCHITECTURE.md, change 24): one database transaction of several statements, a
-- round trip each. With the posting inside each statement, the first settlement of a round
-- locked the row and every later statement of the round, then the commit's WAL flush, ran with
-- it held, while the merchant's withdrawal accepts (which must take their hold on that row, with
-- its balance check) waited. Deferred to the commit, the round's postings run back to back at its
-- end, so the row is held for them and the flush only.
--
-- What does not change: the posting still commits with the state change or not at all (a
-- deferred trigger runs inside the transaction, before it commits); a statement that commits on
-- its own (every other writer of a final state) posts at its own end, as before. A posting that
-- fails now fails the `COMMIT` (or, for a statement on its own, the statement): the group commit
-- reads a refused `COMMIT` as nothing written and writes each of the round's settlements alone.
-- Holds are still taken at accept by the immediate trigger `transactions_ledger_accept`: their
-- balance check must answer the request.
DROP TRIGGER transactions_ledger_final ON transactions;
CREATE CONSTRAINT TRIGGER transactions_ledger_final AFTER UPDATE OF status ON transactions
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status AND NEW.status IN ('succeeded', 'failed'))
    EXECUTE FUNCTION ledger_on_final();
