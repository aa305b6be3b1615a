-- A provider conversation a rotation created but could not map (the mapping changed
-- meanwhile, the turn lease was lost, the transaction failed): nothing reads it, and it
-- holds the user's summary and seed turns upstream. The retirer (services/threads/retirer.py)
-- deletes it upstream once it is older than COACH_THREADS_ORPHAN_GRACE_SECONDS (by then no
-- retry of that rotation can be handed the same conversation again by the llm service's
-- idempotency) and only while no row of threads.conversations maps it (a commit whose
-- acknowledgement was lost did map it: the row is then simply dropped).
CREATE TABLE threads.orphaned_conversations (
    id                       bigserial   PRIMARY KEY,
    user_id                  text        NOT NULL,
    provider_conversation_id text        NOT NULL UNIQUE,
    api                      text        NOT NULL CHECK (api IN ('responses', 'assistants')),
    created_at               timestamptz NOT NULL DEFAULT now(),
    -- The upstream refused to delete it for good (a 400): not tried again.
    upstream_delete_error    text
);
CREATE INDEX orphaned_conversations_to_delete ON threads.orphaned_conversations (created_at)
    WHERE upstream_delete_error IS NULL;
-- "Does any mapping name this provider conversation?", asked once per orphan.
CREATE INDEX conversations_by_provider_id ON threads.conversations (provider_conversation_id);
