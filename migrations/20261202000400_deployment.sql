-- One database, one deployment (core/src/db/deployment.rs). Outbox rows name their topics
-- without the deployment's prefix and any relay claims any unpublished row, so two
-- deployments writing to one database would publish each other's payments to their own
-- brokers. The first process to start claims the database for its `kafka.topic_prefix`; a
-- process configured with another prefix refuses to start.
CREATE TABLE deployment (
    singleton     BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (singleton),
    topic_prefix  TEXT NOT NULL CHECK (length(topic_prefix) BETWEEN 1 AND 200),
    claimed_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);
