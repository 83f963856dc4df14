"""``Prefer: wait=N``: park a request until its job finishes, without polling.

Each API process has one listener on the jobs channel, shared by all its waiting requests. A
request takes a ticket for its job id *before* the job row is inserted, so a consumer that is
already draining the queue cannot finish the job unseen. A finish announced on the channel
carries the job's view, published after its commit, and the listener hands it to the job's
waiter as it is: waiting costs neither a query nor a pooled connection. (A message without the
view, from an older consumer, makes the listener read the announced jobs in one query, on a
connection of its own.) A published finish can still be lost (Redis restarted, the listener
reconnecting), so every waiting job is also re-read once every ``RECHECK`` seconds, all in one
query: a lost message costs at most that, never the whole wait.

Waiting parks a greenlet under gunicorn's gevent worker and a thread under gthread, so the number
of waiters per process is capped (``Settings.wait_capacity``); past the cap a write answers 202
at once and the client polls or listens for ``job_update``.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import msgspec
import redis
from sqlalchemy import Engine, Uuid, any_, bindparam, select
from sqlalchemy.dialects.postgresql import ARRAY

from models.events import decode_job_finished
from models.tables import Job

log = logging.getLogger(__name__)

# How long a waiter trusts the channel before its job is re-read from the database.
RECHECK = 0.5

# A reader: the finished jobs among the given ids (rows with at least ``id``).
Reader = Callable[[Sequence[str]], Sequence[Any]]

# The columns of the REST view of a job (models.events.job_view), as plain columns: built once.
JOB_VIEW_COLUMNS = (Job.id, Job.kind, Job.status, Job.created_at, Job.finished_at, Job.result, Job.error,
                    Job.owner_hash)
_FINISHED = select(*JOB_VIEW_COLUMNS).where(
    Job.id == any_(bindparam("ids", type_=ARRAY(Uuid()))), Job.status.in_(("succeeded", "failed")))


def job_reader(engine: Engine) -> Reader:
    """Reads finished jobs on an autocommit connection: one round trip, no BEGIN or ROLLBACK."""
    autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")

    def read(ids: Sequence[str]) -> Sequence[Any]:
        with autocommit.connect() as connection:
            return connection.execute(_FINISHED, {"ids": [uuid.UUID(i) for i in ids]}).all()

    return read


class Ticket:
    """One request's claim on a job's finish; the reader leaves the finished job's row in ``job``."""

    __slots__ = ("event", "job", "job_id")

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self.event = threading.Event()
        self.job: Any = None


class JobWaiter:
    def __init__(self, client: redis.Redis, channel: str, capacity: int, read: Reader) -> None:
        self._redis = client
        self._channel = channel
        self.capacity = capacity
        self._read = read
        self._tickets: dict[str, Ticket] = {}
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._ready = threading.Event()

    def _ensure_started(self) -> None:
        # Started on first use, i.e. in the gunicorn worker after fork (and after gevent's patching);
        # a thread that died is started again.
        if len(self._threads) == 2 and all(t.is_alive() for t in self._threads):
            return
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()]
            running = {t.name for t in self._threads}
            for name, target in (("job-waiter", self._listen), ("job-recheck", self._recheck)):
                if name not in running:
                    thread = threading.Thread(target=target, name=name, daemon=True)
                    thread.start()
                    self._threads.append(thread)
        self._ready.wait(2.0)

    def _listen(self) -> None:
        while True:
            try:
                pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(self._channel)
                # Finishes published while the listener was away are found by the re-reads.
                self._ready.set()
                for message in pubsub.listen():
                    due = self._announced(message)
                    # A consumer announces a batch at once: take every message already received,
                    # then read all their jobs in one query.
                    while (more := pubsub.get_message(timeout=0.0)) is not None:
                        due |= self._announced(more)
                    if due:
                        self._deliver(due)
            except Exception:
                self._ready.clear()
                log.warning("job waiter lost Redis; reconnecting", exc_info=True)
                time.sleep(0.5)

    def _announced(self, message: dict[str, Any]) -> set[str]:
        """The announced job, if one of this process's waiters wants it and it must be read."""
        data = message.get("data")
        if not isinstance(data, bytes):
            return set()
        try:
            finished = decode_job_finished(data)
        except msgspec.ValidationError:
            log.warning("ignoring a malformed jobs-channel message: %r", data[:200])
            return set()
        # Every API process hears every finish; only this process's waiters matter.
        ticket = self._tickets.get(finished.job_id)
        if ticket is None:
            return set()
        if finished.job is None:
            return {finished.job_id}
        ticket.job = msgspec.to_builtins(finished.job)
        ticket.event.set()
        return set()

    def _recheck(self) -> None:
        while True:
            time.sleep(RECHECK)
            with self._lock:
                ids = set(self._tickets)
            if ids:
                self._deliver(ids)

    def _deliver(self, ids: set[str]) -> None:
        """Read the finished jobs among ``ids`` in one query and wake their waiters."""
        try:
            rows = self._read(sorted(ids))
        except Exception:
            # The database is away: the waiters' own last read at their deadline reports it.
            log.warning("job waiter could not read %d job(s)", len(ids), exc_info=True)
            return
        with self._lock:
            found = [(self._tickets.get(str(row.id)), row) for row in rows]
        for ticket, row in found:
            if ticket is not None:
                ticket.job = row
                ticket.event.set()

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

    def wait(self, ticket: Ticket, timeout: float) -> Any:
        """The finished job: its view (a dict, from the channel) or its row (the columns of
        ``JOB_VIEW_COLUMNS``, read); None after ``timeout`` s.

        At the deadline the job is read once more, so a finish that came in the last instant is
        not answered with a 202.
        """
        if ticket.event.wait(timeout) and ticket.job is not None:
            return ticket.job
        rows = self._read([ticket.job_id])
        return rows[0] if rows else None

    def release(self, ticket: Ticket) -> None:
        with self._lock:
            if self._tickets.get(ticket.job_id) is ticket:
                del self._tickets[ticket.job_id]
