-- A rotation archives the user's provider conversation; the llm service then deletes it
-- upstream (with the messages it holds: the full history stays in threads.messages).
-- upstream_deleted_at NULL: archived but still upstream, waiting for the retirer
-- (services/threads/retirer.py). upstream_delete_error: the upstream refused the deletion
-- for good (a 400); the row is not tried again.
ALTER TABLE threads.conversations ADD COLUMN upstream_deleted_at timestamptz;
ALTER TABLE threads.conversations ADD COLUMN upstream_delete_error text;
-- Conversations archived before this migration are deleted upstream too.
CREATE INDEX conversations_to_retire ON threads.conversations (archived_at)
    WHERE status = 'archived' AND upstream_deleted_at IS NULL AND upstream_delete_error IS NULL;
