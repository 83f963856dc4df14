"""What every locustfile shares: the fixture, the job round trip, and the raw samples.

A write answers 202 with a job; the user then polls ``GET /api/v1/jobs/{id}`` (or, for a share
of writes, sends ``Prefer: wait=10`` and gets the finished job in the answer). Three latencies
come out of that:

- ``accept``: the HTTP round trip of a write that answered 202 (Locust's own figure);
- ``job``: POST-to-job-finished, from just before the POST was sent to the job's ``finishedAt``
  (stamped by the worker just before its commit; same machine, same clock), so the poll interval
  does not inflate it. Reported to Locust as request type ``JOB`` with the job kind as name;
- ``wait``: the round trip of a ``Prefer: wait`` write, a client-side cross-check of ``job``.

Every request is also kept as a raw sample (wall time, category, name, milliseconds, ok) and
written to ``QUIZ_SAMPLES`` when the test stops, with the ids of all accepted jobs, so the
benchmark can compute exact percentiles, charts, and look up every accepted job in the database.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections import Counter
from datetime import datetime
from typing import Any

from locust import FastHttpUser, constant, events
from locust.env import Environment

from loadtests import config
from loadtests.fixtures import Fixture, prepare

log = logging.getLogger("loadtests")

FINISHED = ("succeeded", "failed")
POLL_FIRST = 0.01
POLL_MAX = 0.2
POLL_GIVE_UP = 30.0


class JobFailed(Exception):
    """A job finished as failed with a code the scenario does not expect."""


class JobNotFinished(Exception):
    """A job accepted with 202 that did not finish within POLL_GIVE_UP seconds."""


class Recorder:
    def __init__(self) -> None:
        self.samples: list[tuple[float, str, str, float, bool]] = []
        self.accepted: list[str] = []
        self.outcomes: Counter[str] = Counter()
        self.lock = threading.Lock()

    def on_request(self, request_type: str, name: str, response_time: float, context: dict[str, Any],
                   exception: BaseException | None, start_time: float | None = None, **_: Any) -> None:
        category = (context or {}).get("cat") or ("job" if request_type == "JOB" else "other")
        end = time.time()
        label = name if name.startswith(f"{request_type} ") else f"{request_type} {name}"
        self.samples.append((round(end, 4), category, label, round(response_time, 2), exception is None))

    def dump(self, scenario: str, fixture: Fixture | None) -> None:
        path = config.samples_path()
        if path is None:
            return
        path.write_text(json.dumps({
            "scenario": scenario,
            "slug": fixture.slug if fixture else None,
            "samples": self.samples,
            "accepted": self.accepted,
            "outcomes": dict(self.outcomes),
        }))
        log.info("wrote %d samples and %d accepted job ids to %s", len(self.samples), len(self.accepted), path)


RECORDER = Recorder()
_FIXTURE: Fixture | None = None
_FIXTURE_LOCK = threading.Lock()


def fixture() -> Fixture:
    if _FIXTURE is None:
        raise RuntimeError("the fixture is not loaded; Locust has not started the test")
    return _FIXTURE


def _load_fixture(scenario: str, environment: Environment) -> None:
    global _FIXTURE
    with _FIXTURE_LOCK:
        if _FIXTURE is not None:
            return
        path = config.fixture_path()
        if path is not None:
            _FIXTURE = Fixture.load(path)
        elif environment.host:
            log.info("no QUIZ_FIXTURE: creating a %s competition for %s on %s", config.profile(), scenario,
                     environment.host)
            _FIXTURE = prepare(scenario, environment.host, config.admin_token(), config.profile())
        else:
            return
        log.info("scenario %s on competition %s", scenario, _FIXTURE.slug)


def install(scenario: str) -> None:
    """Hook a locustfile's scenario into Locust's events."""

    @events.init.add_listener
    def _on_init(environment: Environment, **_: Any) -> None:
        environment.events.request.add_listener(RECORDER.on_request)
        # Set up before the headless run timer starts, when the host is already known.
        _load_fixture(scenario, environment)

    @events.test_start.add_listener
    def _on_start(environment: Environment, **_: Any) -> None:
        # In the web UI the host may only be known now.
        _load_fixture(scenario, environment)

    @events.test_stop.add_listener
    def _on_stop(environment: Environment, **_: Any) -> None:
        RECORDER.dump(scenario, _FIXTURE)


def _timestamp(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


class QuizUser(FastHttpUser):
    abstract = True
    # As fast as they can: the workloads are closed loops with no think time.
    wait_time = constant(0)
    # Job error codes that are a normal outcome of the scenario (losing a race, ...).
    expected_errors: frozenset[str] = frozenset()

    @property
    def slug(self) -> str:
        return fixture().slug

    def comp(self, path: str = "") -> str:
        return f"/api/v1/competitions/{self.slug}{path}"

    def _job_event(self, kind: str, ms: float, exception: BaseException | None) -> None:
        self.environment.events.request.fire(request_type="JOB", name=kind, response_time=ms, response_length=0,
                                             exception=exception, context={"cat": "job"})

    def run_job(self, method: str, path: str, body: Any, *, kind: str, label: str,
                token: str | None = None, wait: bool | None = None) -> dict[str, Any] | None:
        """Send a write, follow its job to the end, record the latencies; returns the finished job.

        ``wait``: send ``Prefer: wait=10`` (True), poll (False), or pick by ``QUIZ_WAIT_SHARE`` (None).
        A wait that runs out answers 202, and the job is then polled like any other."""
        if wait is None:
            wait = random.random() < config.wait_share()
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        if wait:
            headers["Prefer"] = "wait=10"
        sent = time.time()
        with self.client.request(method, path, json=body, headers=headers, catch_response=True,
                                 name=f"{label} [wait]" if wait else label,
                                 context={"cat": "wait" if wait else "accept"}) as resp:
            if resp.status_code == 202 or (wait and resp.status_code == 200):
                data = resp.json()
                resp.success()
            else:
                resp.failure(f"{resp.status_code}: {(resp.text or '')[:300]}")
                return None
        RECORDER.accepted.append(data["jobId"])
        token = data.get("teamToken") or token
        if data["status"] not in FINISHED:
            data = self.poll(data["jobId"], token, sent)
            if data is None:
                RECORDER.outcomes[f"{kind} unfinished"] += 1
                self._job_event(kind, POLL_GIVE_UP * 1000, JobNotFinished(f"{kind} not finished in {POLL_GIVE_UP} s"))
                return None
        code = (data.get("error") or {}).get("code")
        RECORDER.outcomes[f"{kind} {data['status']}" + (f" {code}" if code else "")] += 1
        exception = None
        if data["status"] == "failed" and code not in self.expected_errors:
            exception = JobFailed(f"{kind} failed: {code}")
        self._job_event(kind, max(0.0, (_timestamp(data["finishedAt"]) - sent) * 1000), exception)
        if token and "teamToken" not in data:
            data["teamToken"] = token
        return data

    def poll(self, job_id: str, token: str | None, sent: float) -> dict[str, Any] | None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        delay = POLL_FIRST
        while time.time() - sent < POLL_GIVE_UP:
            time.sleep(delay)
            delay = min(delay * 2, POLL_MAX)
            with self.client.get(f"/api/v1/jobs/{job_id}", headers=headers, name="GET /api/v1/jobs/[id]",
                                 catch_response=True, context={"cat": "poll"}) as resp:
                if resp.status_code != 200:
                    resp.failure(f"{resp.status_code}: {(resp.text or '')[:300]}")
                    continue
                resp.success()
                data = resp.json()
            if data["status"] in FINISHED:
                return data
        return None

    def read(self, path: str, label: str, token: str | None = None, params: dict[str, Any] | None = None
             ) -> dict[str, Any] | None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        if params:
            path = path + "?" + "&".join(f"{k}={v}" for k, v in params.items() if v is not None)
        with self.client.get(path, headers=headers, name=label, catch_response=True, context={"cat": "read"}) as resp:
            if resp.status_code != 200:
                resp.failure(f"{resp.status_code}: {(resp.text or '')[:300]}")
                return None
            resp.success()
            return resp.json()

    def register(self, name: str, wait: bool | None = None) -> dict[str, Any] | None:
        return self.run_job("POST", self.comp("/teams"),
                            {"teamName": name, "members": ["Ada", "Grace", "Alan"], "email": f"{name}@example.com"},
                            kind="register", label="POST /competitions/[slug]/teams", wait=wait)
