"""Alembic revisions of the crypto service's database (encryption counts only; never keys)."""
