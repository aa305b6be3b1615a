-- A background fold (services/threads/folding.py) holds its conversation's marker while it
-- summarizes: one fold at a time per conversation across every threads replica. The marker
-- expires by itself, so a replica that died mid-fold blocks nothing for long.
ALTER TABLE threads.conversations ADD COLUMN folding_until timestamptz;
