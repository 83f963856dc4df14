"""Register and claim, waiting (issue 13): a new team registers and gets a question.

The workload the replaced system's README leads with. Each iteration is a new team: it
registers with ``Prefer: wait=10``, then claims a question no other team has been given, with
``Prefer: wait=10``. A team counts once both jobs have succeeded; its latency (request type
``TEAM``) runs from just before the registration is sent to the claim's answer. A wait that runs
out (202) is followed by polling, as a good client would.

    .venv/bin/locust -f loadtests/register_claim.py --headless -u 100 -r 100 -t 30s \
        --host http://127.0.0.1:8000
"""

import itertools
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from locust import task

from loadtests.common import JobFailed, QuizUser, fixture, install
from loadtests.fixtures import board_code

install("register_claim")

_RUN = uuid.uuid4().hex[:6]
_TEAMS = itertools.count()
# One Locust process, so a plain counter hands every team its own question.
_QUESTIONS = itertools.count()


class RegisterClaimUser(QuizUser):
    @task
    def register_and_claim(self) -> None:
        began = time.time()
        error: BaseException | None = None
        job = self.register(f"rc-{_RUN}-{next(_TEAMS):06d}", wait=True)
        if job is None or job["status"] != "succeeded":
            error = JobFailed("registration did not succeed")
        else:
            # Past the board's end the codes repeat and the claims fail: the fixture is sized so
            # that this does not happen (see fixtures.SIZES).
            code = board_code(next(_QUESTIONS) % fixture().board)
            claim = self.run_job("POST", self.comp("/claims"), {"questionId": code}, kind="claim",
                                 label="POST /competitions/[slug]/claims", token=job["teamToken"], wait=True)
            if claim is None or claim["status"] != "succeeded":
                error = JobFailed("claim did not succeed")
        self.environment.events.request.fire(
            request_type="TEAM", name="register + claim", response_time=(time.time() - began) * 1000,
            response_length=0, exception=error, context={"cat": "team"})
