"""What the load tests read from the environment (the app's own settings stay in settings.py).

ADMIN_TOKEN    the organiser token of the stack under test (default: the development token)
QUIZ_FIXTURE   a fixture JSON written by ``python -m loadtests.fixtures``; without it each
               locustfile creates its own competition when Locust starts
QUIZ_PROFILE   ``full`` (default) or ``smoke``: the size of a competition a locustfile creates
QUIZ_SAMPLES   where a locustfile writes its raw latency samples when the test stops
QUIZ_WAIT_SHARE  share of writes sent with ``Prefer: wait=10`` instead of polling (default 1: every
               write, as a good client does; past the API's waiter cap it answers 202 and is polled)
"""

from __future__ import annotations

import os
from pathlib import Path

DEV_ADMIN_TOKEN = "dev-admin-token"


def admin_token() -> str:
    return os.environ.get("ADMIN_TOKEN") or DEV_ADMIN_TOKEN


def fixture_path() -> Path | None:
    raw = os.environ.get("QUIZ_FIXTURE")
    return Path(raw) if raw else None


def profile() -> str:
    return os.environ.get("QUIZ_PROFILE", "full")


def samples_path() -> Path | None:
    raw = os.environ.get("QUIZ_SAMPLES")
    return Path(raw) if raw else None


def wait_share() -> float:
    return float(os.environ.get("QUIZ_WAIT_SHARE", "1"))
