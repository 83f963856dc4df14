"""docker-compose.yml must run the same processes as `python3 manage.py up`.

No Docker engine runs in CI, so the file is checked by reading it: a queue added to the routing,
or a flag changed in the launcher, fails here until the compose file says the same.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

import manage

COMPOSE_FILE = Path(manage.__file__).resolve().parent / "docker-compose.yml"
INFRASTRUCTURE = {"postgres", "redis", "migrate"}
# ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR?error}
_VARIABLE = re.compile(r"\$\{(?P<name>\w+)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


def _interpolate(value: str) -> str:
    """What compose would substitute with none of the variables set; a required one gets a stand-in."""

    def substitute(match: re.Match[str]) -> str:
        op = match.group("op") or ""
        if op.endswith("-"):
            return match.group("arg")
        if op.endswith("?"):
            return f"stand-in-for-{match.group('name').lower()}-0123456789"
        return ""

    return _VARIABLE.sub(substitute, value)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    with COMPOSE_FILE.open() as handle:
        document: dict[str, Any] = yaml.safe_load(handle)
    return document


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose["services"]
    return found


def _app_services(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {name: spec for name, spec in services.items() if name not in INFRASTRUCTURE}


def _environment(spec: dict[str, Any]) -> dict[str, str]:
    raw = spec.get("environment") or {}
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) for item in raw)
    return {key: _interpolate(str(value)) for key, value in raw.items()}


def _argv(command: Any) -> list[str]:
    assert isinstance(command, list), f"use the exec (list) form so argv is exact: {command!r}"
    return [str(part) for part in command]


def test_app_services_run_what_the_launcher_runs(services: dict[str, dict[str, Any]]) -> None:
    app = _app_services(services)
    environments = {name: _environment(spec) for name, spec in app.items()}
    env = environments["api"]
    assert all(e == env for e in environments.values()), "app services should share one environment"

    expected = dict(manage.stack_processes(env))
    actual = {name: _argv(spec.get("command")) for name, spec in app.items()}

    assert sorted(actual) == sorted(expected)
    for name, argv in expected.items():
        assert actual[name] == argv, name


def test_one_worker_service_per_queue(services: dict[str, dict[str, Any]]) -> None:
    env = _environment(services["api"])
    queues = manage.worker_queues(env)
    consumed = [argv[argv.index("-Q") + 1] for spec in services.values()
                if "-Q" in (argv := [str(p) for p in spec.get("command") or []])]  # fmt: skip
    assert sorted(consumed) == sorted(queues)
    assert len(queues) == len(set(queues))
    assert int(env["BOARD_QUEUES"]) == sum(q.startswith("board.") for q in queues)


def test_app_environment_is_production(services: dict[str, dict[str, Any]]) -> None:
    env = _environment(services["api"])
    assert env["QUIZ_ENV"] == "production"
    assert services["api"]["environment"]["ADMIN_TOKEN"].startswith("${ADMIN_TOKEN:?")
    for key in ("DATABASE_URL", "REDIS_URL", "BOARD_QUEUES", "API_HOST", "REALTIME_HOST"):
        assert env.get(key), key
    assert env["DATABASE_URL"].startswith("postgresql://") and "@postgres:" in env["DATABASE_URL"]
    assert env["REDIS_URL"].startswith("redis://redis:")


def test_redis_persists_to_a_volume(compose: dict[str, Any], services: dict[str, dict[str, Any]]) -> None:
    redis = services["redis"]
    command = _argv(redis["command"])
    assert command[command.index("--appendonly") + 1] == "yes"
    volumes = [str(v) for v in redis.get("volumes", [])]
    assert any(v.split(":")[1] == "/data" and v.split(":")[0] in compose.get("volumes", {}) for v in volumes)
    assert "healthcheck" in redis


def test_postgres_has_a_healthcheck(services: dict[str, dict[str, Any]]) -> None:
    postgres = services["postgres"]
    assert str(postgres["image"]).startswith("postgres:16")
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])


def test_migrations_finish_before_any_app_service(services: dict[str, dict[str, Any]]) -> None:
    migrate = services["migrate"]
    assert _argv(migrate["command"]) == ["python", "-m", "models.migrate"]
    assert migrate.get("restart") == "no"
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name, spec in _app_services(services).items():
        assert spec["depends_on"]["migrate"]["condition"] == "service_completed_successfully", name


def test_app_services_share_one_image(services: dict[str, dict[str, Any]]) -> None:
    images = {spec.get("image") for spec in services.values() if spec.get("build")}
    assert len(images) == 1
    assert {name for name, spec in services.items() if spec.get("build")} == (
        set(_app_services(services)) | {"migrate"}
    )
