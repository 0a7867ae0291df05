"""Alembic environment of the index database (see storage/migrate.py)."""

from storage.migrate import run_environment

run_environment("alembic_version")
