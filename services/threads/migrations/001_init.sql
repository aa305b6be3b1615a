-- The threads service's tables live in their own schema: the ledger shares the database.
CREATE SCHEMA IF NOT EXISTS threads;

-- user -> provider conversation (Responses conversation or Assistants thread).
CREATE TABLE threads.conversations (
    id                       bigserial PRIMARY KEY,
    user_id                  text        NOT NULL,
    provider_conversation_id text        NOT NULL,
    api                      text        NOT NULL CHECK (api IN ('responses', 'assistants')),
    status                   text        NOT NULL DEFAULT 'active'
                                         CHECK (status IN ('active', 'archived')),
    -- Running summary of every message with id <= summarized_through.
    summary                  text        NOT NULL DEFAULT '',
    summarized_through       bigint      NOT NULL DEFAULT 0,
    -- Every message of the user with id <= seen_through is known to the provider
    -- conversation (seeded, appended, or answered in it).
    seen_through             bigint      NOT NULL DEFAULT 0,
    -- Messages the conversation was created with, and messages added since.
    seed_turns               integer     NOT NULL DEFAULT 0,
    turns_in_window          integer     NOT NULL DEFAULT 0,
    generation               integer     NOT NULL DEFAULT 1,
    created_at               timestamptz NOT NULL DEFAULT now(),
    updated_at               timestamptz NOT NULL DEFAULT now(),
    archived_at              timestamptz,
    CHECK ((status = 'archived') = (archived_at IS NOT NULL))
);
-- At most one active conversation per user, enforced by the database.
CREATE UNIQUE INDEX conversations_one_active_per_user
    ON threads.conversations (user_id) WHERE status = 'active';
CREATE INDEX conversations_by_user ON threads.conversations (user_id, id);

-- The full history: one row per user message ('in') and per coach answer ('out').
CREATE TABLE threads.messages (
    id              bigserial PRIMARY KEY,
    user_id         text        NOT NULL,
    direction       text        NOT NULL CHECK (direction IN ('in', 'out')),
    text            text        NOT NULL,
    route           text        NOT NULL,
    message_type    text        NOT NULL,
    model           text        NOT NULL DEFAULT '',
    request_id      text        NOT NULL,
    -- The provider conversation the message was answered in (stateful turns only).
    conversation_id bigint      REFERENCES threads.conversations (id),
    created_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (request_id, direction)
);
CREATE INDEX messages_by_user ON threads.messages (user_id, id DESC);

-- One row per answered request: what a retry with the same request_id gets back.
CREATE TABLE threads.exchanges (
    request_id            text PRIMARY KEY,
    user_id               text        NOT NULL,
    user_text             text        NOT NULL,
    coach_texts           text[]      NOT NULL,
    route                 text        NOT NULL,
    message_type          text        NOT NULL,
    pattern               text        NOT NULL DEFAULT '',
    model                 text        NOT NULL DEFAULT '',
    charges               jsonb       NOT NULL DEFAULT '[]',
    conversation_id       text        NOT NULL DEFAULT '',
    latency_ms            bigint      NOT NULL DEFAULT 0,
    baseline_input_tokens bigint      NOT NULL DEFAULT 0,
    created_at            timestamptz NOT NULL DEFAULT now()
);

-- Per-user counters kept in the same transaction as the messages, so that
-- GetUserState is a primary-key read plus a short index range scan. Every
-- exchange locks this row first: a user's message ids follow commit order.
CREATE TABLE threads.user_stats (
    user_id           text PRIMARY KEY,
    message_count     integer     NOT NULL DEFAULT 0,
    history_tokens    bigint      NOT NULL DEFAULT 0,
    today             date        NOT NULL DEFAULT (now() AT TIME ZONE 'UTC')::date,
    messages_today    integer     NOT NULL DEFAULT 0,
    last_canned_reply text        NOT NULL DEFAULT '',
    updated_at        timestamptz NOT NULL DEFAULT now()
);

-- Upkeep calls (summaries written while pruning) not yet charged to an answer.
-- The next exchange stored for the user takes them, in its own transaction.
CREATE TABLE threads.pending_charges (
    id         bigserial PRIMARY KEY,
    user_id    text        NOT NULL,
    request_id text        NOT NULL,
    charge     jsonb       NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX pending_charges_by_user ON threads.pending_charges (user_id, id);

-- Transactional outbox of ledger AnswerRecords, relayed by ledger_relay.
CREATE TABLE threads.outbox (
    id         bigserial PRIMARY KEY,
    request_id text        NOT NULL UNIQUE,
    record     jsonb       NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- What the save_goal tool saved.
CREATE TABLE threads.goals (
    id         bigserial PRIMARY KEY,
    user_id    text        NOT NULL,
    goal       text        NOT NULL,
    deadline   text        NOT NULL DEFAULT '',
    arguments  jsonb       NOT NULL DEFAULT '{}',
    request_id text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (request_id, goal)
);
CREATE INDEX goals_by_user ON threads.goals (user_id, id);
