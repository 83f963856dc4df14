"""gunicorn settings, derived from the one Settings object."""

from settings import Settings

_settings = Settings.from_env()

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
# Threads, because ``Prefer: wait`` parks a request until its job finishes.
worker_class = "gthread"
threads = _settings.api_threads
preload_app = False
keepalive = 5
timeout = 30
graceful_timeout = 10
accesslog = None
loglevel = _settings.log_level.lower()
# gunicorn 27's control socket lives at one path per user; several API processes on one host
# (tests, benchmarks) would fight over it, and nothing here uses it.
control_socket_disable = True
