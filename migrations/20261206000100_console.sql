-- The console (issue 19): people who sign in to the web dashboard, and the review of flagged
-- callbacks.
--
-- A console user is either a merchant user (one merchant's data) or an operator (every
-- merchant's). Passwords are stored only as argon2id PHC strings. Emails are kept as typed
-- and unique without regard to case.
CREATE TABLE console_users (
    id             UUID PRIMARY KEY,
    email          TEXT NOT NULL CHECK (length(email) BETWEEN 3 AND 254),
    password_hash  TEXT NOT NULL CHECK (password_hash LIKE '$argon2id$%'),
    role           TEXT NOT NULL CHECK (role IN ('merchant', 'operator')),
    merchant_id    UUID REFERENCES merchants (id),
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    disabled_at    TIMESTAMPTZ,
    -- A merchant user belongs to exactly one merchant; an operator to none.
    CHECK ((role = 'merchant') = (merchant_id IS NOT NULL))
);
CREATE UNIQUE INDEX console_users_email ON console_users (lower(email));

-- A flagged callback (conflict, mismatch) is reviewed by a person: who, when, and what they
-- found. The flag stays as it was (it says what happened); `reviewed_at` takes it off the queue.
ALTER TABLE callback_log
    ADD COLUMN reviewed_at  TIMESTAMPTZ,
    ADD COLUMN reviewed_by  TEXT CHECK (length(reviewed_by) BETWEEN 1 AND 200),
    ADD COLUMN review_note  TEXT CHECK (length(review_note) BETWEEN 1 AND 2000);
CREATE INDEX callback_log_review_queue ON callback_log (created_at) WHERE needs_review AND reviewed_at IS NULL;
