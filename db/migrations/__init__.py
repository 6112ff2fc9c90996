"""Alembic migrations of the job store, driven by :func:`db.migrate.upgrade`."""
