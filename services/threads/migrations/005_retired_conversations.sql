-- A rotation archives the user's provider conversation; the llm service then deletes it
-- upstream (with the messages it holds: the full history stays in threads.messages).
-- NULL: archived but still upstream, waiting for the retirer (services/threads/retirer.py).
ALTER TABLE threads.conversations ADD COLUMN upstream_deleted_at timestamptz;
-- Conversations archived before this migration are deleted upstream too.
CREATE INDEX conversations_to_retire ON threads.conversations (archived_at)
    WHERE status = 'archived' AND upstream_deleted_at IS NULL;
