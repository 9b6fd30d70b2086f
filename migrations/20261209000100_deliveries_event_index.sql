-- Issue 18: an index the unique constraint already provides.
--
-- `webhook_deliveries_event (event_id)` duplicates the leading column of the unique index
-- `webhook_deliveries_event_id_destination_generation_key (event_id, destination, generation)`,
-- which answers every lookup by `event_id` (a B-tree serves any prefix of its columns). Each
-- delivery row wrote it three times: at its insert, and at the two updates that change its
-- state (leased, finished), which are never HOT because `state` is in the partial indexes.
DROP INDEX webhook_deliveries_event;
