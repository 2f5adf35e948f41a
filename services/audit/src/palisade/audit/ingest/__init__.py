"""Ingest: validating a batch, checking its workspaces, encrypting PII, appending to chains."""
