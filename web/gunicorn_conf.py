"""gunicorn settings, derived from the one Settings object."""

import json
import os
import shutil
import tempfile
from pathlib import Path

from gunicorn import util as _gunicorn_util

from settings import Settings
from web.errors import PROBLEM, PROBLEM_BASE, STATUS_KINDS

_settings = Settings.from_env()

# The request metrics of every worker go to files in one folder, summed at each scrape
# (web/metrics.py). prometheus_client picks its multiprocess mode from the environment when it is
# first imported, which happens in the workers after fork, so the master sets the variable here,
# before any worker exists. A folder of our own per start: files left by an earlier run would
# add its counts to this one's, and two APIs on one host must not share one.
_metrics_dir = Path(_settings.prometheus_multiproc_dir or tempfile.mkdtemp(prefix="quiz-api-metrics-"))
_own_metrics_dir = not _settings.prometheus_multiproc_dir
_metrics_dir.mkdir(parents=True, exist_ok=True)
for _stale in _metrics_dir.glob("*.db"):
    _stale.unlink()
os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(_metrics_dir)

if _settings.log_format == "json":
    # gunicorn's own lines (workers booting, timeouts) in the same JSON as the app's.
    logconfig_dict = {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "logs.JsonFormatter", "process": "api"}},
        "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "json"}},
        "loggers": {"gunicorn.error": {"handlers": ["console"], "level": _settings.log_level, "propagate": False}},
    }

bind = f"{_settings.api_host}:{_settings.api_port}"
workers = _settings.api_workers
# ``Prefer: wait`` parks a request until its job finishes: under gevent that is a greenlet, not a
# thread. gevent's worker monkey-patches the process before it imports the app, so psycopg picks
# its cooperative wait (it checks for gevent's patching at import) and the job waiter's listener
# and locks become greenlet-friendly. Nothing imported by this file may import psycopg or redis.
worker_class = _settings.api_worker_class
threads = _settings.api_threads
worker_connections = _settings.api_worker_connections
preload_app = False
keepalive = 5
timeout = 30
graceful_timeout = 10
accesslog = None
loglevel = _settings.log_level.lower()
# gunicorn 27's control socket lives at one path per user; several API processes on one host
# (tests, benchmarks) would fight over it, and nothing here uses it.
control_socket_disable = True


def _problem_error(sock: object, status_int: int, reason: str, mesg: str) -> None:
    """gunicorn's own refusals (a header it cannot parse, a request line too long) in the API's
    problem+json, not an HTML page: every client error is answered in one format."""
    kind, title = STATUS_KINDS.get(status_int, ("bad-request", reason))
    body = json.dumps({"type": PROBLEM_BASE + kind, "title": title, "status": status_int,
                       "detail": mesg or reason}).encode()
    head = (f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\n"
            f"Content-Type: {PROBLEM}\r\nContent-Length: {len(body)}\r\n\r\n")
    _gunicorn_util.write_nonblock(sock, head.encode("latin-1") + body)


# Workers are forked from the process that read this file, so they inherit the replacement.
_gunicorn_util.write_error = _problem_error


def child_exit(server: object, worker: object) -> None:
    # A dead worker's counters stay (they are history); only its live gauges are dropped.
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid, str(_metrics_dir))  # type: ignore[attr-defined]


def on_exit(server: object) -> None:
    if _own_metrics_dir:
        shutil.rmtree(_metrics_dir, ignore_errors=True)


def post_worker_init(worker: object) -> None:
    if worker_class != "gevent":
        return
    import psycopg.waiting

    # psycopg's C wait blocks the whole process, every greenlet with it; it is chosen at import
    # unless gevent had patched ``select`` first. Fail loudly rather than serve one request at a time.
    if psycopg.waiting.wait is getattr(psycopg.waiting, "wait_c", None):
        raise RuntimeError("psycopg was imported before gevent patched the process; its waits would block "
                           "every greenlet (is something in web/gunicorn_conf.py importing it?)")
