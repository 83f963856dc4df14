"""``Prefer: wait=N``: block a request thread until its job finishes, without polling.

One subscriber thread per process listens on the jobs channel. A request takes a ticket for
its job id *before* the job row is inserted, so a consumer that is already draining the queue
cannot finish the job unseen. A published finish can still be lost (Redis restarted, the
subscriber reconnecting), so a waiter also re-reads its job every ``RECHECK`` seconds: a lost
message costs at most that, never the whole wait.

Waiting parks a request thread, so the number of waiters per process is capped; past the cap a
write answers 202 at once and the client polls or listens for ``job_update``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import msgspec
import redis

from models.events import decode_job_finished

log = logging.getLogger(__name__)

T = TypeVar("T")

# How long a waiter trusts the channel before it re-reads its job from the database.
RECHECK = 0.5


class Ticket:
    """One request's claim on a job's finish."""

    __slots__ = ("event", "job_id")

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self.event = threading.Event()


class JobWaiter:
    def __init__(self, client: redis.Redis, channel: str, capacity: int) -> None:
        self._redis = client
        self._channel = channel
        self.capacity = capacity
        self._tickets: dict[str, Ticket] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()

    def _ensure_started(self) -> None:
        # Started on first use, i.e. in the gunicorn worker after fork.
        if self._thread is None or not self._thread.is_alive():
            with self._lock:
                if self._thread is None or not self._thread.is_alive():
                    self._thread = threading.Thread(target=self._listen, name="job-waiter", daemon=True)
                    self._thread.start()
            self._ready.wait(2.0)

    def _listen(self) -> None:
        while True:
            try:
                pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(self._channel)
                # Finishes published while the subscriber was away are found by the re-reads.
                self._ready.set()
                for message in pubsub.listen():
                    data = message.get("data")
                    if not isinstance(data, bytes):
                        continue
                    try:
                        job_id = decode_job_finished(data).job_id
                    except msgspec.ValidationError:
                        log.warning("ignoring a malformed jobs-channel message: %r", data[:200])
                        continue
                    with self._lock:
                        ticket = self._tickets.get(job_id)
                    if ticket is not None:
                        ticket.event.set()
            except Exception:
                self._ready.clear()
                log.warning("job waiter lost Redis; reconnecting", exc_info=True)
                time.sleep(0.5)

    @property
    def waiting(self) -> int:
        return len(self._tickets)

    def register(self, job_id: str) -> Ticket | None:
        """A ticket for ``job_id``, or None when this process already has ``capacity`` waiters."""
        self._ensure_started()
        ticket = Ticket(job_id)
        with self._lock:
            if len(self._tickets) >= self.capacity:
                return None
            self._tickets[job_id] = ticket
        return ticket

    def wait(self, ticket: Ticket, timeout: float, read: Callable[[], T | None]) -> T | None:
        """Wait up to ``timeout`` s for the job; ``read`` returns it once finished, else None.

        Reads the job when the channel says it finished, and every ``RECHECK`` s regardless.
        """
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            ticket.event.wait(max(0.0, min(RECHECK, remaining)))
            ticket.event.clear()
            found = read()
            if found is not None or time.monotonic() >= deadline:
                return found

    def release(self, ticket: Ticket) -> None:
        with self._lock:
            if self._tickets.get(ticket.job_id) is ticket:
                del self._tickets[ticket.job_id]
