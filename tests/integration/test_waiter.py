"""The API's shared waiter: a finish announced with the job's view answers without a read."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator, Sequence
from types import SimpleNamespace
from typing import Any

import pytest
import redis

from models.events import JobFinished, JobLinks, JobView, encode
from settings import Settings
from web.waiter import JobWaiter


class Reads:
    """A reader that finds the given rows and counts what it was asked."""

    def __init__(self, rows: dict[str, Any] | None = None) -> None:
        self.rows = rows or {}
        self.asked: list[str] = []
        self.lock = threading.Lock()

    def __call__(self, ids: Sequence[str]) -> Sequence[Any]:
        with self.lock:
            self.asked.extend(ids)
        return [self.rows[i] for i in ids if i in self.rows]


@pytest.fixture
def client(settings: Settings) -> Iterator[redis.Redis]:
    made = redis.Redis.from_url(settings.redis_url)
    yield made
    made.close()


def _waiter(client: redis.Redis, reads: Reads) -> tuple[JobWaiter, str]:
    channel = f"waiter-test.{uuid.uuid4().hex[:8]}"
    return JobWaiter(client, channel, 10, reads), channel


def test_a_finish_with_the_view_answers_the_waiter_without_a_read(client: redis.Redis) -> None:
    reads = Reads()  # the database would say "not finished yet": only the message can answer
    waiter, channel = _waiter(client, reads)
    job_id = str(uuid.uuid4())
    ticket = waiter.register(job_id)
    assert ticket is not None
    view = JobView(job_id=job_id, kind="claim", status="succeeded", created_at="2026-12-02T07:00:00.000000Z",
                   finished_at="2026-12-02T07:00:00.050000Z", links=JobLinks(job=f"/api/v1/jobs/{job_id}"),
                   result={"questionId": "Q1"})
    client.publish(channel, encode(JobFinished(job_id=str(uuid.uuid4()), status="succeeded")))  # not ours
    client.publish(channel, encode(JobFinished(job_id=job_id, status="succeeded", job=view)))
    try:
        answer = waiter.wait(ticket, 5.0)
    finally:
        waiter.release(ticket)
    assert answer == {"jobId": job_id, "kind": "claim", "status": "succeeded",
                      "createdAt": "2026-12-02T07:00:00.000000Z", "finishedAt": "2026-12-02T07:00:00.050000Z",
                      "links": {"job": f"/api/v1/jobs/{job_id}"}, "result": {"questionId": "Q1"}}
    # Only the periodic re-check read anything, and never a job that was not waited for.
    assert set(reads.asked) <= {job_id}


def test_a_finish_without_the_view_is_read(client: redis.Redis) -> None:
    job_id = str(uuid.uuid4())
    row = SimpleNamespace(id=uuid.UUID(job_id), status="failed")
    reads = Reads({job_id: row})
    waiter, channel = _waiter(client, reads)
    ticket = waiter.register(job_id)
    assert ticket is not None
    client.publish(channel, encode(JobFinished(job_id=job_id, status="failed")))
    try:
        assert waiter.wait(ticket, 5.0) is row
    finally:
        waiter.release(ticket)
    assert job_id in reads.asked
