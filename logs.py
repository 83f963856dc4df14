"""Logging for every process: plain text (the default) or, with ``LOG_FORMAT=json``, one JSON object
per line with ``time``, ``level``, ``process``, ``logger``, ``message`` and, where there is one, the
``request_id`` of the HTTP request the line is about.

The API takes the id from ``X-Request-ID`` (or makes one) and sends it with the job's message, so a
consumer's lines about that job carry it too: one grep follows a write from HTTP to the worker.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import re
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from settings import Settings

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# What a client may send as X-Request-ID; anything else is replaced, so a log line cannot be forged.
_VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")

_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)


def new_request_id(offered: str | None = None) -> str:
    """The client's id when it is a sane token, otherwise a fresh one."""
    if offered and _VALID_REQUEST_ID.fullmatch(offered):
        return offered
    return uuid.uuid4().hex


def current_request_id() -> str | None:
    """The id of the request (or job) this thread is working for, if any."""
    found = _request_id.get()
    if found is not None:
        return found
    # Inside a Celery task the id travels as a message header (models/broker.py).
    state = sys.modules.get("celery._state")
    task = state.get_current_task() if state is not None else None
    if task is not None and task.request is not None:
        # A worker puts a message's headers on the request; an eager apply() keeps them in `headers`.
        header = task.request.get("request_id") or (task.request.get("headers") or {}).get("request_id")
        return header if isinstance(header, str) else None
    return None


@contextlib.contextmanager
def request_id_scope(request_id: str | None) -> Iterator[None]:
    token = _request_id.set(request_id)
    try:
        yield
    finally:
        _request_id.reset(token)


def set_request_id(request_id: str | None) -> contextvars.Token[str | None]:
    """For code whose start and end are separate calls (middleware); undo with ``reset_request_id``."""
    return _request_id.set(request_id)


def reset_request_id(token: contextvars.Token[str | None]) -> None:
    _request_id.reset(token)


class JsonFormatter(logging.Formatter):
    def __init__(self, process: str = "") -> None:
        super().__init__()
        self.process = process

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "process": self.process or record.processName,
            "pid": record.process,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = current_request_id()
        if request_id is not None:
            line["request_id"] = request_id
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def formatter(settings: Settings, process: str) -> logging.Formatter:
    return JsonFormatter(process) if settings.log_format == "json" else logging.Formatter(TEXT_FORMAT)


def configure(settings: Settings, process: str) -> None:
    """The root logger of this process: one handler on stderr, in the configured format."""
    handler = logging.StreamHandler()
    handler.setFormatter(formatter(settings, process))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.log_level)
    # Python's warnings (a library's deprecation notice) become records in the same format.
    logging.captureWarnings(True)
