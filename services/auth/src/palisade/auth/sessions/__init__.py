"""Sessions: tokens, the session manager and store, revocation feed and outbox, recent auth."""
