"""``Prefer: wait=N``: block a request thread until its job finishes, without polling.

One subscriber thread per process listens on the jobs channel; requests register an Event
for their job id before the job is enqueued, so a fast worker cannot finish unseen.
"""

from __future__ import annotations

import logging
import threading
import time

import msgspec
import redis

from models.events import decode_job_finished

log = logging.getLogger(__name__)


class JobWaiter:
    def __init__(self, client: redis.Redis, channel: str) -> None:
        self._redis = client
        self._channel = channel
        self._events: dict[str, threading.Event] = {}
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
                        event = self._events.get(job_id)
                    if event is not None:
                        event.set()
            except Exception:
                # Redis restarted: waiters time out and fall back to reading the row.
                self._ready.clear()
                log.warning("job waiter lost Redis; reconnecting", exc_info=True)
                with self._lock:
                    for event in self._events.values():
                        event.set()
                time.sleep(0.5)

    def register(self, job_id: str) -> threading.Event:
        self._ensure_started()
        event = threading.Event()
        with self._lock:
            self._events[job_id] = event
        return event

    def release(self, job_id: str) -> None:
        with self._lock:
            self._events.pop(job_id, None)
