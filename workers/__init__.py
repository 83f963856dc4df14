"""Celery workers: the only processes that change game state."""
