"""The Celery application. ``celery -A workers.celery_app worker -Q <queue> -c 1 -P solo``."""

from __future__ import annotations

import sys
from typing import Any

from celery import Celery
from celery.signals import setup_logging

import logs
from settings import Settings


def create_celery(settings: Settings) -> Celery:
    app = Celery("quiz", broker=settings.redis_url, include=["workers.tasks"])
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # One job at a time per consumer: the serial-per-queue guarantee and acks_late
        # together mean a killed worker's job is redelivered, not lost.
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
        broker_transport_options={
            # A job's row is the truth; if a message is not acked in this time (worker hung
            # or killed) Redis redelivers it and the worker finds the job done or redoes it.
            "visibility_timeout": 300,
            "socket_timeout": 5,
            "socket_connect_timeout": 5,
        },
        task_default_queue="registrations",
        task_create_missing_queues=True,
        worker_send_task_events=True,
        task_send_sent_event=False,
    )
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
