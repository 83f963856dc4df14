"""Asks a source tree about its own stack; run as ``python -c <this file's source> COMMAND`` with
the tree as the working directory, so every import is that tree's code (``bench --compare``).

``info``: its queues, the settings the report shows, and its command lines when it has
``processes.py`` (older trees do not; the benchmark then uses the commands they were run with).
``ping QUEUE...``: waits until a Celery consumer answers on each queue (exit 1 after 90 s).

Standard library and the tree's own modules only: this must run against old commits.
"""

import json
import os
import sys
import time

sys.path.insert(0, os.getcwd())


def _info() -> dict:
    from settings import Settings

    try:
        from models.kinds import all_queues
    except ImportError:  # a tree from before the job-kind registry
        from workers.routing import all_queues

    settings = Settings.from_env(os.environ)
    queues = all_queues(settings)
    fields = ("database_url", "api_workers", "api_threads", "board_queues", "competition_queues", "mystery_shards",
              "db_pool_size", "broadcast_interval", "environment")
    out = {"queues": queues, "settings": {f: getattr(settings, f, None) for f in fields}, "commands": None}
    try:
        import processes
    except ImportError:
        return out
    try:
        single = {k: processes.expand(processes.kind(k), settings)[0].argv for k in ("api", "sweeper", "realtime")}
        out["commands"] = {**single, "consumers": {q: processes.consumer(settings, q).argv for q in queues}}
    except Exception as exc:  # a processes.py of another shape: fall back to the old command lines
        out["commands_error"] = repr(exc)
    return out


def _ping(queues: list[str]) -> int:
    from settings import Settings
    from workers.celery_app import create_celery

    app = create_celery(Settings.from_env(os.environ))
    deadline = time.monotonic() + 90
    try:
        while time.monotonic() < deadline:
            replies = app.control.ping(timeout=1.0) or []
            if set(queues) <= {name.split("@", 1)[0] for reply in replies for name in reply}:
                return 0
        return 1
    finally:
        app.close()


if __name__ == "__main__":
    if sys.argv[1] == "info":
        print(json.dumps(_info(), default=str))
    else:
        sys.exit(_ping(sys.argv[2:]))
