"""Scenario 1, registration storm: every user registers teams as fast as it can.

Each iteration registers one team with a unique name and follows its job to the end (poll, or
``Prefer: wait`` for a share), so a user has at most one registration in flight.

    .venv/bin/locust -f loadtests/registration.py --headless -u 100 -r 100 -t 30s \
        --host http://127.0.0.1:8000
"""

import itertools
import sys
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from locust import task

from loadtests.common import QuizUser, install

install("registration")

_RUN = uuid.uuid4().hex[:6]
_SERIAL = itertools.count()


class RegistrationUser(QuizUser):
    @task
    def register_team(self) -> None:
        self.register(f"storm-{_RUN}-{next(_SERIAL):06d}")
