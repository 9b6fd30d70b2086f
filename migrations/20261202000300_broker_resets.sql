-- Times the broker was seen to have lost its state (restarted empty, topics deleted): one row
-- per sighting (core/src/bus/reset.rs). Every process polls the newest id: its relay replaces
-- its producer (the old client's producer id means nothing to the new broker) and its healers
-- re-announce at once what the broker may have dropped, instead of waiting out their bounds.
-- Postgres is shared by every process, so one process's sighting heals all of them.
CREATE TABLE broker_resets (
    id           BIGSERIAL PRIMARY KEY,
    detected_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- Which part of which process saw it (for the operator; never a secret).
    detected_by  TEXT NOT NULL CHECK (length(detected_by) BETWEEN 1 AND 200)
);
