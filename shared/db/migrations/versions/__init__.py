"""Alembic revisions, one file each, written by hand and reviewed (never generated at run time)."""
