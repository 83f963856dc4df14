"""Realtime across processes, behind HAProxy as ``manage.py up --realtime 2`` runs it.

Clients on different processes, over WebSocket and long-polling, get the same events, and
``seq`` never goes down on a client, even when it reconnects to the other process.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
import socketio

from tests.support import Api, Db, Stack, answer_of, ok_job, questions, unique

COOKIE = "QUIZRT"


class Client:
    """A python-socketio client on one transport, with a cookie jar of its own."""

    def __init__(self, url: str, auth: dict[str, Any], transport: str, backend: str | None = None) -> None:
        self.url, self.auth, self.transport = url, auth, transport
        self.http = requests.Session()
        if backend is not None:
            # As the balancer would have set it, so its answer replaces it rather than adding one.
            self.http.cookies.set(COOKIE, backend, domain=urlsplit(url).hostname, path="/")
        self.sio = socketio.Client(reconnection=False, http_session=self.http)
        self.events: list[tuple[str, dict[str, Any]]] = []
        self._cond = threading.Condition()
        self.sio.on("*", self._record)

    def _record(self, event: str, data: Any = None) -> None:
        with self._cond:
            self.events.append((event, data))
            self._cond.notify_all()

    def connect(self) -> Client:
        self.sio.connect(self.url, auth=self.auth, transports=[self.transport], wait_timeout=10)
        return self

    @property
    def backend(self) -> str | None:
        values = {cookie.value for cookie in self.http.cookies if cookie.name == COOKIE}
        assert len(values) <= 1, f"the client holds two different {COOKIE} cookies: {values}"
        return values.pop() if values else None

    def seqs(self) -> list[int]:
        with self._cond:
            return [data["seq"] for _, data in self.events]

    def wait_for(self, predicate: Callable[[list[tuple[str, dict[str, Any]]]], bool], what: str,
                 timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(list(self.events)):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"{self.transport} client on {self.backend}: no {what}; got "
                                         f"{[name for name, _ in self.events]}")
                self._cond.wait(remaining)

    def close(self) -> None:
        if self.sio.connected:
            self.sio.disconnect()
        self.http.close()


@pytest.fixture
def balanced(stack: Stack) -> Iterator[str]:
    # Two HAProxy processes on one port (BALANCER_PROCESSES), as a host whose descriptor limit is
    # too low for its audience runs them: a client's requests may reach either, and the cookie
    # must send them to the same realtime process all the same.
    with stack.balanced_realtime(2, balancers=2) as url:
        yield url


@pytest.fixture
def clients() -> Iterator[list[Client]]:
    made: list[Client] = []
    yield made
    for client in made:
        client.close()


def _shows(board: list[dict[str, Any]]) -> Callable[[list[tuple[str, dict[str, Any]]]], bool]:
    def check(events: list[tuple[str, dict[str, Any]]]) -> bool:
        boards = [data["leaderboard"] for name, data in events if name == "leaderboard_update"]
        return bool(boards) and boards[-1] == board

    return check


def test_clients_on_both_processes_over_both_transports_see_the_same_events(
        api: Api, db: Db, balanced: str, clients: list[Client]) -> None:
    slug = api.create_competition()["slug"]
    api.add_questions(slug, questions(3))
    owls = api.register(slug, unique("owls"))
    auth = {"competition": slug}

    # A client without the balancer's cookie is given one naming the process it landed on, and
    # its later polls (a session lives in one process) go there. Clients that already hold a
    # cookie are sent to that process, which is how this test puts them on both.
    fresh = Client(balanced, auth, "polling").connect()
    assert fresh.backend in ("r0", "r1")
    polling = [Client(balanced, auth, "polling", backend).connect() for backend in ("r0", "r1")]
    sockets = [Client(balanced, auth, "websocket", backend).connect() for backend in ("r0", "r1")]
    team = Client(balanced, {**auth, "token": owls.token}, "websocket", "r1").connect()
    clients += [fresh, *polling, *sockets, team]
    assert [c.backend for c in polling] == ["r0", "r1"]

    ok_job(api.claim(slug, owls.token, "Q1"))
    ok_job(api.submit(slug, owls.token, "Q1", answer_of("Q1")))
    board = db.standings(db.competition(slug).id, 10)
    assert board[0]["teamName"] == owls.name and board[0]["points"] == 1100
    for client in clients:
        client.wait_for(_shows(board), "final standings")
        client.wait_for(lambda events: any(name == "question_claimed" and data["questionId"] == "Q1"
                                           for name, data in events), "question_claimed")
    team.wait_for(lambda events: sum(name == "job_update" for name, _ in events) >= 2, "two job_updates")
    for client in clients:
        seqs = client.seqs()
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs), (client.transport, client.backend, seqs)


def test_seq_never_goes_down_when_a_client_moves_to_the_other_process(
        api: Api, db: Db, balanced: str, clients: list[Client]) -> None:
    slug = api.create_competition()["slug"]
    api.add_questions(slug, questions(3))
    owls = api.register(slug, unique("owls"))
    auth = {"competition": slug, "token": owls.token}
    competition_id = db.competition(slug).id

    for transport, first, second in (("polling", "r0", "r1"), ("websocket", "r1", "r0")):
        before = Client(balanced, auth, transport, first).connect()
        clients.append(before)
        code = f"Q{1 if transport == 'polling' else 2}"
        ok_job(api.claim(slug, owls.token, code))
        ok_job(api.submit(slug, owls.token, code, answer_of(code)))
        before.wait_for(_shows(db.standings(competition_id, 10)), "the standings after the answer")
        assert before.backend == first
        last = before.seqs()[-1]
        before.close()

        # The same client comes back through the balancer to the other process.
        after = Client(balanced, auth, transport, second).connect()
        clients.append(after)
        after.wait_for(lambda events: any(name == "leaderboard_update" for name, _ in events), "a snapshot")
        assert after.backend == second
        seqs = after.seqs()
        assert seqs[0] > last, f"{transport}: seq went from {last} on {first} to {seqs[0]} on {second}"
        assert seqs == sorted(seqs)
