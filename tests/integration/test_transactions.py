"""web/'s transaction model (web/transactions.py) on the real app and a real PostgreSQL: every
responder declares its mode, the middleware commits or rolls back, and after-commit hooks run only
after a commit that succeeded."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import falcon
import falcon.testing
import pytest
import redis
from sqlalchemy import Engine, event, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert

from models.kinds import ADJUST
from models.names import name_key
from models.tables import Competition, Job, Team
from settings import Settings
from tests.support import ADMIN_TOKEN, unique
from web.app import create_app
from web.auth import new_token_seed, team_token, token_hash
from web.deps import Deps
from web.errors import Problem
from web.media import write_json
from web.resources import common
from web.resources.common import accept_job
from web.transactions import Mode, after_commit, mode_of, on_close, reads, writes, writes_one_statement

PROBLEM = "application/problem+json"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def responders(app: falcon.App) -> Iterator[tuple[str, str, Any]]:
    """(route, method, responder) for every method of every route, suffixed responders included;
    Falcon's own (405, OPTIONS) left out. Falcon has no public walk of its router: falcon.inspect
    walks the same private ``_roots`` but gives names, not the responders."""
    nodes = list(app._router._roots)
    while nodes:
        node = nodes.pop()
        nodes.extend(node.children)
        for method, responder in (node.method_map or {}).items():
            if not getattr(responder, "__module__", "").startswith("falcon."):
                yield node.uri_template, method, responder


@dataclass
class Probe:
    """What a test route saw; ``seen`` in order."""

    seen: list[str] = field(default_factory=list)
    values: dict[str, Any] = field(default_factory=dict)


@dataclass
class InProcess:
    client: falcon.testing.TestClient
    deps: Deps
    app: falcon.App


@pytest.fixture
def in_process(settings: Settings) -> Iterator[InProcess]:
    deps = Deps.create(settings)
    app = create_app(settings, deps)
    try:
        yield InProcess(falcon.testing.TestClient(app), deps, app)
    finally:
        deps.close()


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch, engine: Engine) -> list[tuple[str, str | None]]:
    """Enqueues, recorded instead of sent, each with the job's status as another connection sees it
    at that moment (None: not visible, i.e. not committed)."""
    calls: list[tuple[str, str | None]] = []

    def enqueue(producer: Any, job_id: str, kind: str, queue: str) -> None:
        with engine.connect() as conn:
            calls.append((job_id, conn.scalar(select(Job.status).where(Job.id == uuid.UUID(job_id)))))

    monkeypatch.setattr(common, "enqueue", enqueue)
    return calls


def competition_exists(engine: Engine, slug: str) -> bool:
    with engine.connect() as conn:
        return conn.scalar(select(Competition.id).where(Competition.slug == slug)) is not None


def new_competition(engine: Engine) -> Any:
    """A draft competition's row (id, slug, ...), committed."""
    slug = unique("tx")
    with engine.begin() as conn:
        conn.execute(pg_insert(Competition).values(slug=slug, title="Transactions"))
    with engine.connect() as conn:
        return conn.execute(select(Competition).where(Competition.slug == slug)).one()


def test_every_responder_declares_a_mode(in_process: InProcess) -> None:
    found = list(responders(in_process.app))
    undeclared = [(route, method) for route, method, responder in found if mode_of(responder) is None]
    assert undeclared == []
    assert len(found) > 30, found
    modes = {(route, method): mode_of(responder) for route, method, responder in found}
    assert modes["/api/v1/competitions/{slug}/claims", "POST"] is Mode.WRITES_ONE_STATEMENT
    assert modes["/api/v1/competitions/{slug}/teams", "POST"] is Mode.WRITES_ONE_STATEMENT
    assert modes["/api/v1/competitions/{slug}", "PATCH"] is Mode.WRITES
    assert modes["/api/v1/jobs/{job_id:uuid}", "GET"] is Mode.READS


def test_the_walk_finds_an_undeclared_responder(in_process: InProcess) -> None:
    class Bare:
        def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
            req.context.session.execute(text("SELECT 1"))

        @reads
        def on_get_listing(self, req: falcon.Request, resp: falcon.Response) -> None: ...

        def on_put_listing(self, req: falcon.Request, resp: falcon.Response) -> None: ...

    in_process.app.add_route("/test/bare", Bare())
    in_process.app.add_route("/test/bare/listing", Bare(), suffix="listing")
    undeclared = {(route, method) for route, method, responder in responders(in_process.app)
                  if mode_of(responder) is None}
    assert undeclared == {("/test/bare", "GET"), ("/test/bare/listing", "PUT")}
    # Undeclared means no session at all: the first query fails instead of writing outside a transaction.
    resp = in_process.client.simulate_get("/test/bare")
    assert resp.status_code == 500
    assert resp.headers["Content-Type"] == PROBLEM


def test_reads_get_an_autocommit_session_that_refuses_writes(in_process: InProcess, engine: Engine) -> None:
    probe = Probe()
    slug = unique("tx-read")

    class Read:
        @reads
        def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
            session = req.context.session
            first = session.scalar(text("SELECT transaction_timestamp()"))
            session.scalar(text("SELECT pg_sleep(0.02)"))
            second = session.scalar(text("SELECT transaction_timestamp()"))
            probe.values["one transaction"] = first == second
            probe.values["autocommit"] = session.connection().connection.dbapi_connection.autocommit
            write_json(resp, {})

        @reads
        def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
            req.context.session.execute(pg_insert(Competition).values(slug=slug, title="not a read"))

    in_process.app.add_route("/test/read", Read())
    assert in_process.client.simulate_get("/test/read").status_code == 200
    assert probe.values == {"one transaction": False, "autocommit": True}

    refused = in_process.client.simulate_post("/test/read")
    assert refused.status_code == 500
    assert refused.headers["Content-Type"] == PROBLEM
    assert not competition_exists(engine, slug)


def test_a_route_that_queries_nothing_takes_no_connection(in_process: InProcess) -> None:
    checkouts: list[object] = []
    event.listen(in_process.deps.engine, "checkout", lambda *args: checkouts.append(args))
    assert in_process.client.simulate_get("/healthz").status_code == 200
    assert checkouts == []
    # The probe is real: a read that queries does take one.
    assert in_process.client.simulate_get("/api/v1/competitions/no-such-one").status_code == 404
    assert len(checkouts) == 1


def test_hooks_run_in_order_after_the_commit_and_may_answer(in_process: InProcess, engine: Engine) -> None:
    probe = Probe()
    slug = unique("tx-hooks")

    def visible(name: str) -> Callable[[], None]:
        def hook() -> None:
            probe.seen.append(f"{name}: {'visible' if competition_exists(engine, slug) else 'not visible'}")
        return hook

    class Write:
        @writes
        def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
            req.context.session.execute(pg_insert(Competition).values(slug=slug, title="hooks"))
            after_commit(req, visible("first"))
            after_commit(req, visible("second"))
            after_commit(req, lambda: write_json(resp, {"answeredBy": "hook"}, falcon.HTTP_200))
            on_close(req, lambda: probe.seen.append("closed"))
            probe.seen.append(f"responder: {'visible' if competition_exists(engine, slug) else 'not visible'}")
            write_json(resp, {"answeredBy": "responder"}, falcon.HTTP_201)

    in_process.app.add_route("/test/hooks", Write())
    resp = in_process.client.simulate_post("/test/hooks")
    assert (resp.status_code, resp.json) == (200, {"answeredBy": "hook"})
    assert probe.seen == ["responder: not visible", "first: visible", "second: visible", "closed"]


def test_a_write_whose_responder_raises_writes_nothing_and_runs_no_hook(in_process: InProcess,
                                                                        engine: Engine) -> None:
    probe = Probe()
    slug = unique("tx-raise")

    class Write:
        @writes
        def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
            req.context.session.execute(pg_insert(Competition).values(slug=slug, title="raises"))
            after_commit(req, lambda: probe.seen.append("hook"))
            on_close(req, lambda: probe.seen.append("closed"))
            raise Problem(falcon.HTTP_409, "conflict", "Conflict", "refused after writing")

    in_process.app.add_route("/test/raise", Write())
    resp = in_process.client.simulate_post("/test/raise")
    assert resp.status_code == 409
    assert resp.headers["Content-Type"] == PROBLEM
    assert not competition_exists(engine, slug)
    assert probe.seen == ["closed"]


def test_a_hook_that_raises_is_answered_as_problem_json(in_process: InProcess, engine: Engine) -> None:
    probe = Probe()
    slug = unique("tx-hook-raises")

    def broker_down() -> None:
        raise redis.ConnectionError("the broker is away")

    class Write:
        @writes
        def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
            req.context.session.execute(pg_insert(Competition).values(slug=slug, title="committed"))
            after_commit(req, lambda: probe.seen.append("first"))
            after_commit(req, broker_down)
            after_commit(req, lambda: probe.seen.append("after the failure"))
            on_close(req, lambda: probe.seen.append("closed"))
            write_json(resp, {"answeredBy": "responder"}, falcon.HTTP_201)

    in_process.app.add_route("/test/hook-raises", Write())
    resp = in_process.client.simulate_post("/test/hook-raises")
    assert resp.status_code == 503, resp.text
    assert resp.headers["Content-Type"] == PROBLEM
    assert resp.headers["Retry-After"] == "5"
    assert resp.json["status"] == 503
    # The hooks run after the commit: the write stands, and the first failure ends the hooks.
    assert competition_exists(engine, slug)
    assert probe.seen == ["first", "closed"]


def test_a_one_statement_write_that_raises_runs_no_hook(in_process: InProcess, engine: Engine) -> None:
    probe = Probe()

    class Write:
        @writes_one_statement
        def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
            after_commit(req, lambda: probe.seen.append("hook"))
            on_close(req, lambda: probe.seen.append("closed"))
            raise Problem(falcon.HTTP_422, "validation-error", "Request validation failed", "refused")

    in_process.app.add_route("/test/one-statement", Write())
    resp = in_process.client.simulate_post("/test/one-statement")
    assert resp.status_code == 422
    assert resp.headers["Content-Type"] == PROBLEM
    assert probe.seen == ["closed"]


def test_a_failing_commit_answers_problem_json_and_runs_no_hook(in_process: InProcess, engine: Engine) -> None:
    taken = new_competition(engine)
    probe = Probe()
    slug = unique("tx-commit")

    class Write:
        @writes
        def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
            session = req.context.session
            session.execute(pg_insert(Competition).values(slug=slug, title="rolled back with the rest"))
            # Not flushed before the commit: the unique slug is violated at the commit itself.
            session.add(Competition(slug=taken.slug, title="duplicate"))
            after_commit(req, lambda: probe.seen.append("hook"))
            on_close(req, lambda: probe.seen.append("closed"))
            resp.location = f"/api/v1/competitions/{slug}"
            write_json(resp, {"slug": slug}, falcon.HTTP_201)

    in_process.app.add_route("/test/commit", Write())
    resp = in_process.client.simulate_post("/test/commit")
    assert resp.status_code == 409, resp.text
    assert resp.headers["Content-Type"] == PROBLEM
    assert resp.json["type"].endswith("/conflict")
    # The Location named a row that the failed commit did not create.
    assert "Location" not in resp.headers
    assert not competition_exists(engine, slug)
    assert probe.seen == ["closed"]


def test_a_failing_commit_after_accept_job_enqueues_nothing_and_releases_the_waiter(
        in_process: InProcess, engine: Engine, sent: list[tuple[str, str | None]]) -> None:
    competition = new_competition(engine)
    deps = in_process.deps

    class Write:
        @writes
        def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
            accept_job(req, resp, deps, competition=competition, kind=ADJUST.name,
                       queue=ADJUST.queue(deps.settings, competition.id), payload={"n": 1},
                       owner_hash=token_hash(ADMIN_TOKEN), team_id=None)
            req.context.session.add(Competition(slug=competition.slug, title="duplicate"))

    in_process.app.add_route("/test/accept", Write())
    resp = in_process.client.simulate_post("/test/accept", headers={"Prefer": "wait=5"})
    assert resp.status_code == 409, resp.text
    assert resp.headers["Content-Type"] == PROBLEM
    assert sent == []
    assert deps.waiter.waiting == 0
    with engine.connect() as conn:
        assert conn.scalar(select(Job.id).where(Job.competition_id == competition.id)) is None


def test_a_job_is_enqueued_after_its_commit(in_process: InProcess, engine: Engine,
                                            sent: list[tuple[str, str | None]]) -> None:
    competition = new_competition(engine)
    resp = in_process.client.simulate_post(f"/api/v1/competitions/{competition.slug}/teams",
                                           json={"teamName": unique("Hooked"), "members": [], "email": None})
    assert resp.status_code == 202, resp.text
    assert resp.headers["Location"] == f"/api/v1/jobs/{resp.json['jobId']}"
    assert sent == [(resp.json["jobId"], "queued")]


def test_prefer_wait_is_answered_by_the_hook(in_process: InProcess, engine: Engine, monkeypatch: pytest.MonkeyPatch,
                                             ) -> None:
    competition = new_competition(engine)

    def enqueue_and_finish(producer: Any, job_id: str, kind: str, queue: str) -> None:
        # A consumer that finishes the job at once.
        with engine.begin() as conn:
            conn.execute(update(Job).where(Job.id == uuid.UUID(job_id)).values(
                status="succeeded", result={"finished": True}, finished_at=text("now()")))

    monkeypatch.setattr(common, "enqueue", enqueue_and_finish)
    resp = in_process.client.simulate_post(
        f"/api/v1/competitions/{competition.slug}/teams", headers={"Prefer": "wait=5"},
        json={"teamName": unique("Waiting"), "members": [], "email": None})
    assert resp.status_code == 200, resp.text
    assert resp.headers["Preference-Applied"] == "wait=5"
    assert resp.json["status"] == "succeeded"
    assert resp.json["result"] == {"finished": True}
    assert "teamToken" in resp.json
    assert in_process.deps.waiter.waiting == 0


def _statements(deps: Deps) -> list[tuple[str, bool]]:
    """Every statement the app's engine sends from now on, with whether its connection was in
    autocommit (psycopg then sends no BEGIN and no COMMIT)."""
    seen: list[tuple[str, bool]] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append((statement.split()[0].upper(), conn.connection.dbapi_connection.autocommit))

    event.listen(deps.engine, "before_cursor_execute", record)
    return seen


def test_team_writes_stay_one_autocommit_statement(in_process: InProcess, engine: Engine,
                                                   sent: list[tuple[str, str | None]]) -> None:
    competition = new_competition(engine)
    token = team_token(in_process.deps.settings, new_token_seed())
    with engine.begin() as conn:
        conn.execute(pg_insert(Team).values(competition_id=competition.id, name="Counted", name_key=name_key("Counted"),
                                            members=[], token_hash=token_hash(token), starting_points=1000,
                                            points=1000))
    statements = _statements(in_process.deps)

    resp = in_process.client.simulate_post(f"/api/v1/competitions/{competition.slug}/teams",
                                           json={"teamName": unique("Counted"), "members": [], "email": None})
    assert resp.status_code == 202, resp.text
    assert statements == [("INSERT", True)]

    claims = f"/api/v1/competitions/{competition.slug}/claims"
    headers = {"Authorization": f"Bearer {token}"}
    for expected in ([("SELECT", True), ("INSERT", True)], [("INSERT", True)]):
        # The first finds the competition and the team; later ones fold the lookup into the INSERT.
        statements.clear()
        resp = in_process.client.simulate_post(claims, headers=headers, json={"questionId": "Q1"})
        assert resp.status_code == 202, resp.text
        assert statements == expected
    assert len(sent) == 3 and all(status == "queued" for _, status in sent)


def test_organiser_patch_emits_after_its_commit(in_process: InProcess, engine: Engine,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    competition = new_competition(engine)
    seen: list[tuple[str, Any]] = []

    def state_now() -> str | None:
        with engine.connect() as conn:
            return conn.scalar(select(Competition.state).where(Competition.id == competition.id))

    monkeypatch.setattr(in_process.deps.live, "publish_change", lambda change: seen.append(("publish", state_now())))
    monkeypatch.setattr("models.events.emit", lambda *args, **kwargs: seen.append(("emit", state_now())))
    resp = in_process.client.simulate_patch(f"/api/v1/competitions/{competition.slug}", headers=ADMIN,
                                            json={"state": "open"})
    assert resp.status_code == 200, resp.text
    assert resp.json["state"] == "open"
    assert seen == [("emit", "open"), ("publish", "open")]

    seen.clear()
    refused = in_process.client.simulate_patch(f"/api/v1/competitions/{competition.slug}", headers=ADMIN,
                                               json={"state": "draft"})
    assert refused.status_code == 409
    assert seen == []
