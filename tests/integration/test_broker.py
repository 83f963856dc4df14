"""A job's message, built by ``models.broker`` and pushed with one LPUSH, is the message Celery sends."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery import Celery
from kombu import Connection

from models.broker import Producer, task_message
from models.kinds import task_name
from settings import Settings


@pytest.fixture
def scratch_queue(broker: redis.Redis) -> Iterator[str]:
    name = f"broker-test.{uuid.uuid4().hex[:8]}"
    yield name
    broker.delete(name, f"_kombu.binding.{name}", f"_kombu.binding_permanent.{name}")


def _decoded(raw: bytes) -> dict[str, Any]:
    message = json.loads(raw)
    message["body"] = json.loads(base64.b64decode(message["body"]))
    return message


def test_the_message_is_the_one_celery_sends(celery: Celery, broker: redis.Redis, scratch_queue: str,
                                              sender: Producer) -> None:
    job_id = str(uuid.uuid4())
    celery.send_task(task_name("claim"), kwargs={"job_id": job_id}, queue=scratch_queue, task_id=job_id,
                     headers={"request_id": "req-1"})
    sender.send(job_id, "claim", scratch_queue, "req-1")
    ours_raw, theirs_raw = broker.lrange(scratch_queue, 0, -1)  # LPUSH: the newest first
    ours, theirs = _decoded(ours_raw), _decoded(theirs_raw)

    assert ours["body"] == theirs["body"] == [[], {"job_id": job_id}, {"callbacks": None, "errbacks": None,
                                                                        "chain": None, "chord": None}]
    assert ours.keys() == theirs.keys()
    assert {k: v for k, v in ours.items() if k not in ("headers", "properties", "body")} == \
        {k: v for k, v in theirs.items() if k not in ("headers", "properties", "body")}
    # Everything but the sender's name is the same, the task's id (the job's) included.
    assert {k: v for k, v in ours["headers"].items() if k != "origin"} == \
        {k: v for k, v in theirs["headers"].items() if k != "origin"}
    assert ours["properties"].keys() == theirs["properties"].keys()
    for key in ("correlation_id", "delivery_mode", "priority", "body_encoding"):
        assert ours["properties"][key] == theirs["properties"][key]
    assert ours["properties"]["delivery_info"]["routing_key"] == scratch_queue
    assert ours["properties"]["delivery_tag"] != theirs["properties"]["delivery_tag"]


def test_a_consumer_reads_it_as_a_task_message(settings: Settings, sender: Producer, scratch_queue: str) -> None:
    """kombu, reading the queue as a worker does, gets the task's name, id, headers and arguments."""
    job_id = str(uuid.uuid4())
    sender.send(job_id, "register", scratch_queue)
    with Connection(settings.redis_url) as connection:
        queue = connection.SimpleQueue(scratch_queue)
        message = queue.get(timeout=5)
        try:
            assert message.headers["task"] == task_name("register")
            assert message.headers["id"] == job_id
            assert message.content_type == "application/json"
            assert message.decode() == [[], {"job_id": job_id}, {"callbacks": None, "errbacks": None,
                                                                  "chain": None, "chord": None}]
            assert message.delivery_info["routing_key"] == scratch_queue
        finally:
            message.ack()
            queue.close()


def test_each_message_has_its_own_delivery_tag() -> None:
    """kombu keeps a taken message's unacked copy under its tag: a re-send must not overwrite the first."""
    first, again = (json.loads(task_message("j", "claim", "q", origin="o", reply_to="r")) for _ in range(2))
    assert first["properties"]["delivery_tag"] != again["properties"]["delivery_tag"]
