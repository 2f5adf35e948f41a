"""The crypto service: versioned keys outside any database, AES-256-GCM envelopes, blind indexes."""
