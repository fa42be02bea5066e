"""Alembic migrations of the farm's database; run them with `shared.db.migrate.upgrade` (`renderfarm db upgrade`)."""
