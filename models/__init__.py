"""Shared data layer: SQLAlchemy models, engine/session factories, migrations."""
