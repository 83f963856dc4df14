"""LOG_FORMAT=json lines, and the request id from the HTTP request to the job's consumer."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from celery import Celery

import logs
from models.broker import enqueue, task_message
from settings import Settings, SettingsError
from workers.celery_app import process_name


def _record(message: str = "hello %s", args: tuple[Any, ...] = ("world",)) -> logging.LogRecord:
    return logging.LogRecord("quiz.test", logging.WARNING, __file__, 1, message, args, None)


def test_a_json_line_has_time_level_process_and_message() -> None:
    line = json.loads(logs.JsonFormatter("board.0").format(_record()))
    assert line["message"] == "hello world"
    assert line["level"] == "WARNING"
    assert line["process"] == "board.0"
    assert line["logger"] == "quiz.test"
    assert line["time"].endswith("+00:00")
    assert "request_id" not in line


def test_a_line_carries_the_request_id_of_its_scope() -> None:
    formatter = logs.JsonFormatter("api")
    with logs.request_id_scope("req-42"):
        assert json.loads(formatter.format(_record()))["request_id"] == "req-42"
    assert "request_id" not in json.loads(formatter.format(_record()))


def test_one_line_per_record_even_with_newlines_and_exceptions() -> None:
    try:
        raise ValueError("bad\nthing")
    except ValueError:
        record = _record("two\nlines", ())
        record.exc_info = __import__("sys").exc_info()
    text = logs.JsonFormatter("api").format(record)
    assert "\n" not in text
    assert "ValueError" in json.loads(text)["exception"]


@pytest.mark.parametrize("offered", [None, "", "has space", "x" * 129, "line\nbreak", "ünïcode"])
def test_an_unusable_request_id_is_replaced(offered: str | None) -> None:
    made = logs.new_request_id(offered)
    assert made != offered and len(made) == 32


def test_a_sane_request_id_is_kept() -> None:
    assert logs.new_request_id("lb-7f3a.2:9_x") == "lb-7f3a.2:9_x"


class _Recorder:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    def send(self, job_id: str, kind: str, queue: str, request_id: str | None = None) -> None:
        message = json.loads(task_message(job_id, kind, queue, origin="test", reply_to="r", request_id=request_id))
        self.sent.append(message)


def test_the_job_message_carries_the_request_id() -> None:
    sender = _Recorder()
    with logs.request_id_scope("req-7"):
        enqueue(sender, "job-1", "claim", "board.2")  # type: ignore[arg-type]
    enqueue(sender, "job-2", "claim", "board.2")  # type: ignore[arg-type]
    assert sender.sent[0]["headers"]["request_id"] == "req-7"
    assert sender.sent[0]["properties"]["delivery_info"]["routing_key"] == "board.2"
    assert "request_id" not in sender.sent[1]["headers"]


def test_a_task_logs_with_the_request_id_of_its_message() -> None:
    app = Celery("logs-test")
    seen: list[str | None] = []

    @app.task(name="logs.probe")
    def probe() -> None:
        seen.append(logs.current_request_id())

    probe.apply(headers={"request_id": "req-9"})
    probe.apply()
    assert seen == ["req-9", None]


def test_consumers_are_named_by_their_queue() -> None:
    assert process_name(["celery", "-A", "workers.celery_app", "worker", "-Q", "board.3", "-c", "1"]) == "board.3"
    assert process_name(["celery", "-A", "workers.celery_app", "flower", "--port=5555"]) == "flower"


def test_log_format_is_text_or_json() -> None:
    assert Settings.from_env({}).log_format == "text"
    assert Settings.from_env({"LOG_FORMAT": "json"}).log_format == "json"
    with pytest.raises(SettingsError):
        Settings.from_env({"LOG_FORMAT": "xml"})


def test_configure_writes_json_to_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        logs.configure(Settings.from_env({"LOG_FORMAT": "json", "LOG_LEVEL": "INFO"}), "sweeper")
        logging.getLogger("workers.sweeper").info("re-sent %d job(s)", 3)
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        logging.captureWarnings(False)
    line = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert line["process"] == "sweeper" and line["message"] == "re-sent 3 job(s)"
