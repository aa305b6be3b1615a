-- Answer records the ledger refused as invalid: kept aside (never lost) so one bad
-- record cannot block the relay of every record behind it. An operator can fix and
-- move them back:  INSERT INTO threads.outbox (request_id, record) SELECT ...
CREATE TABLE threads.outbox_rejected (
    id          bigint      PRIMARY KEY,
    request_id  text        NOT NULL,
    record      jsonb       NOT NULL,
    error       text        NOT NULL,
    created_at  timestamptz NOT NULL,
    rejected_at timestamptz NOT NULL DEFAULT now()
);
