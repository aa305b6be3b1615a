"""coach.ledger.v1.LedgerService: exact cost accounting, spend and savings reports, limits."""
