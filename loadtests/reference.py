"""The same-run reference's load (issue 11): the registration storm's users, posting to the
minimal write endpoint of ``loadtests/reference_app.py`` instead of the API.

    .venv/bin/locust -f loadtests/reference.py --headless -u 100 -r 100 -t 30s --host http://127.0.0.1:18010
"""

import itertools
import sys
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from locust import FastHttpUser, constant, events, task
from locust.env import Environment

from loadtests.common import RECORDER

_RUN = uuid.uuid4().hex[:6]
_SERIAL = itertools.count()


@events.init.add_listener
def _on_init(environment: Environment, **_: Any) -> None:
    environment.events.request.add_listener(RECORDER.on_request)


@events.test_stop.add_listener
def _on_stop(environment: Environment, **_: Any) -> None:
    RECORDER.dump("reference", None)


class ReferenceUser(FastHttpUser):
    wait_time = constant(0)

    @task
    def write(self) -> None:
        name = f"ref-{_RUN}-{next(_SERIAL):06d}"
        body = {"teamName": name, "members": ["Ada", "Grace", "Alan"], "email": f"{name}@example.com"}
        with self.client.post("/reference", json=body, name="POST /reference", catch_response=True,
                              context={"cat": "accept"}) as resp:
            if resp.status_code == 202:
                resp.success()
            else:
                resp.failure(f"{resp.status_code}: {(resp.text or '')[:300]}")
