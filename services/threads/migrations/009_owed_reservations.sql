-- A user's owed upkeep (a summary, a fold, a turn paid for but not stored) is reserved by the
-- claim on their next request id (threads.answer_claims), so the router reports it in that
-- answer's reply and the ledger bills exactly what the replies said. A reservation whose
-- claim is gone or expired is free again; the exchange stored under the request id takes
-- the charges it reserved.
ALTER TABLE threads.pending_charges ADD COLUMN reserved_for text;
