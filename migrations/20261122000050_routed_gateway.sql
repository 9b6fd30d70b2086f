-- The gateway the latest provider attempt went to, kept apart from `gateway` (the one the
-- merchant asked for, if any): after an ambiguous attempt the retry must go to the same
-- provider, and failover must know where it has been.
ALTER TABLE transactions ADD COLUMN routed_gateway TEXT;
