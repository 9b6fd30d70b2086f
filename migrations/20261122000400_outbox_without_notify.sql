-- The relay is no longer woken by NOTIFY. A transaction that calls pg_notify takes a
-- cluster-wide lock at commit and holds it through its WAL flush, so every outbox write
-- (one or more per payment) was serialised behind the previous one's fsync: measured here,
-- 1,371 commits/s with the NOTIFY against 5,681 without. Relays are now woken in process by
-- the writers and poll for rows another process left (see core/src/bus/relay.rs).
DROP TRIGGER IF EXISTS outbox_notify ON outbox;
DROP FUNCTION IF EXISTS outbox_notify();
