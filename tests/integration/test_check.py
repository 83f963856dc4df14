"""``manage.py check``: silent on a healthy competition, loud on each broken invariant."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime

from sqlalchemy import update

from models.live import Live, Standing
from models.tables import Team
from settings import Settings
from tests.support import REPO, Api, Db, answer_of, insert_job, ok_job, questions, register_teams, unique


def _check(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "models.check", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=60, check=False)


def test_check_passes_a_played_competition_and_names_each_broken_invariant(
        api: Api, db: Db, settings: Settings, test_env: dict[str, str]) -> None:
    env = {**test_env, "PATH": str(REPO / ".venv" / "bin")}
    slug = api.create_competition()["slug"]
    competition_id = db.competition(slug).id
    api.add_questions(slug, questions(3))
    teams = register_teams(api, db, slug, [unique("ok") for _ in range(3)])
    for team, code in zip(teams, ("Q1", "Q2", "Q3"), strict=True):
        ok_job(api.claim(slug, team.token, code))
        ok_job(api.submit(slug, team.token, code, answer_of(code)))

    healthy = _check(env, slug)
    assert healthy.returncode == 0, healthy.stdout + healthy.stderr
    assert "every invariant holds" in healthy.stdout

    # Points moved behind the ledger's back.
    with db.sessions.begin() as session:
        session.execute(update(Team).where(Team.id == teams[0].id).values(points=Team.points + 7))
    # A job nobody ever ran.
    insert_job(db, competition_id=competition_id, kind="claim", queue=unique("lost"), token=teams[1].token,
               payload={"questionId": "Q9"}, team_id=teams[1].id, age_seconds=600)
    # A cache that says something PostgreSQL does not.
    live = Live(settings)
    try:
        live.update(competition_id, [Standing(teams[2].id, teams[2].name, 99_999, 10**9, datetime.now(UTC))])
    finally:
        live.redis.close()

    broken = _check(env, slug)
    assert broken.returncode == 1, broken.stdout + broken.stderr
    lines = broken.stdout.splitlines()
    assert any(f"{slug}: ledger: team {teams[0].id}" in line for line in lines), lines
    assert any(f"{slug}: stuck jobs: 1 claim job(s)" in line for line in lines), lines
    assert any(f"{slug}: leaderboard cache: rank 1" in line and "99999" in line for line in lines), lines
    assert lines[-1] == "3 problem(s) in 1 competition(s)"

    unknown = _check(env, unique("nope"))
    assert unknown.returncode == 1 and "does not exist" in unknown.stdout
