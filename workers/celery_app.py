"""The Celery application. ``celery -A workers.celery_app worker -Q <queue> -c 1 -P solo``."""

from __future__ import annotations

import sys
from typing import Any

from celery import Celery
from celery.signals import setup_logging
from kombu import Queue

import logs
from models.broker import celery_config
from models.kinds import all_queues
from settings import Settings


def create_celery(settings: Settings) -> Celery:
    # The producers' configuration (models/broker.py) plus the tasks, generated from the job kinds.
    app = Celery("quiz", broker=settings.redis_url, include=["workers.tasks"])
    app.conf.update(celery_config(settings))
    # Every queue, declared: Flower lists these on its Broker page, with their lengths, even when
    # it could not ask the workers which queues they consume (it asks once, as it starts, which
    # under `manage.py up` is before the workers are up, and the answer times out when they are busy).
    app.conf.task_queues = [Queue(name) for name in all_queues(settings)]
    app.conf.quiz_settings = settings
    if settings.log_format == "json":

        def json_logging(**_: Any) -> None:
            logs.configure(settings, process_name(sys.argv))

        # Connected, this signal replaces Celery's own logging set-up (its text lines) with ours.
        setup_logging.connect(json_logging, weak=False)
        if process_name(sys.argv) == "flower":
            # Flower sends no such signal; with a handler on the root logger already, tornado adds none.
            logs.configure(settings, "flower")
    return app


def process_name(argv: list[str]) -> str:
    """A consumer is named by its queue (``-Q board.0``), as the launcher and compose name it."""
    if "-Q" in argv[:-1]:
        return argv[argv.index("-Q") + 1]
    return "flower" if "flower" in argv else "celery"


app = create_celery(Settings.from_env())
