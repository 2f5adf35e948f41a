"""Alembic revisions of the webhooks service's database."""
