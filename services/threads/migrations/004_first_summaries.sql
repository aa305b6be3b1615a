-- The running summary of a user who has no provider conversation yet. A first stateful
-- turn that comes after more than N messages (canned and cheap answers before it) folds
-- the older ones into a summary before it creates the conversation; should creating it
-- then fail, the retry continues from this row instead of summarizing (and paying for)
-- the same messages again. The row goes away in the transaction that inserts the user's
-- first conversation, which carries the summary from then on.
CREATE TABLE threads.first_summaries (
    user_id            text        PRIMARY KEY,
    summary            text        NOT NULL,
    summarized_through bigint      NOT NULL,
    updated_at         timestamptz NOT NULL DEFAULT now()
);
