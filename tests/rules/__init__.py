"""The game rules in-process, on a real PostgreSQL inside a rolled-back transaction.

Between unit/ (nothing running) and integration/ (the whole stack): these need PostgreSQL only,
no Celery, HTTP or Redis, and run in milliseconds each. ``pytest tests/rules``.
"""
