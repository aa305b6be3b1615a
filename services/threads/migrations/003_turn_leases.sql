-- Per-user turn leases: serialize a user's stateful turns across every replica without
-- holding a database connection for the whole turn (the upstream call is long).
-- A turn owns the row while holder = its random token and expires_at is in the future;
-- a crashed holder's lease simply expires. Writes of a turn check the lease (fencing).
CREATE TABLE threads.turn_leases (
    user_id    text        PRIMARY KEY,
    holder     text        NOT NULL,
    expires_at timestamptz NOT NULL
);
