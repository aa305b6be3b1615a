-- Claims on request ids, so that a request id is answered once across every router replica.
-- A router claims (user_id, request_id) before it decides anything; a second router with the
-- same request id finds the claim and waits for the first one's answer (or for the claim to
-- expire: its holder died) instead of answering anew. When the answer is stored (in
-- threads.exchanges), the claim is marked answered (expires_at = 'infinity') in the same
-- transaction, so it can never be taken over. Old rows are swept (threads.exchanges keeps
-- answering retries after that).
CREATE TABLE threads.answer_claims (
    request_id text        PRIMARY KEY,
    user_id    text        NOT NULL,
    -- The router instance (its origin) and the claiming attempt's random token.
    holder     text        NOT NULL,
    token      text        NOT NULL,
    expires_at timestamptz NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
-- A user's answers claimed elsewhere and not stored yet (per-user order across routers).
CREATE INDEX answer_claims_by_user ON threads.answer_claims (user_id);
CREATE INDEX answer_claims_by_age ON threads.answer_claims (created_at);
