"""Alembic revisions of the apikeys service's database."""
