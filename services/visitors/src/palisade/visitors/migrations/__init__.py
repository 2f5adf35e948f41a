"""Alembic revisions of the visitors service's database."""
