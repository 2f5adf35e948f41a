"""Alembic revisions of the audit service's database."""
