"""Alembic environment of the access database (see storage/migrate.py)."""

from storage.migrate import run_environment

run_environment("alembic_version_access")
