"""docker-compose.yml must run the same processes as `python3 manage.py up`, and be fit to deploy.

`make compose-test` (deploy/ci/compose_test.py) builds and runs the stack for real; these checks read
the file, so they run in milliseconds in every test run: a queue added to the routing, or a flag
changed in the launcher, fails here until the compose file says the same.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

import manage
import processes
from settings import Settings

REPO = Path(manage.__file__).resolve().parent
COMPOSE_FILE = REPO / "docker-compose.yml"
ENV_EXAMPLE = REPO / ".env.example"
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
    """The app's settings a service gets; FLOWER_* are Flower's own options (its login), not the app's."""
    raw = spec.get("environment") or {}
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) for item in raw)
    return {key: _interpolate(str(value)) for key, value in raw.items() if not key.startswith("FLOWER_")}


def _argv(command: Any) -> list[str]:
    assert isinstance(command, list), f"use the exec (list) form so argv is exact: {command!r}"
    return [str(part) for part in command]


def test_app_services_run_what_the_launcher_runs(services: dict[str, dict[str, Any]]) -> None:
    app = _app_services(services)
    env = _environment(services["api"])
    # One environment for all, plus what the process table gives an instance of its own (the
    # port of each realtime process behind the balancer).
    own = {p.name: p.env for p in processes.stack(Settings.from_env(env))}
    for name, spec in app.items():
        assert _environment(spec) == {**env, **own.get(name, {})}, name

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
    for secret in ("ADMIN_TOKEN", "SECRET_KEY"):
        assert services["api"]["environment"][secret].startswith(f"${{{secret}:?"), secret
    for key in ("DATABASE_URL", "REDIS_URL", "BOARD_QUEUES", "API_HOST", "REALTIME_HOST"):
        assert env.get(key), key
    database = urlsplit(env["DATABASE_URL"])
    assert database.scheme == "postgresql" and database.hostname == "postgres"
    assert database.username == "quiz_app", "the app connects as its non-superuser role"
    assert "${APP_DB_PASSWORD:?" in services["api"]["environment"]["DATABASE_URL"]
    redis_url = urlsplit(env["REDIS_URL"])
    assert redis_url.scheme == "redis" and redis_url.hostname == "redis"
    assert "${REDIS_PASSWORD:?" in services["api"]["environment"]["REDIS_URL"]


def test_redis_persists_to_a_volume(compose: dict[str, Any], services: dict[str, dict[str, Any]]) -> None:
    redis = services["redis"]
    command = " ".join(_argv(redis["command"]))
    assert "--appendonly yes" in command
    assert '--requirepass "$$REDIS_PASSWORD"' in command, "a password, read from the environment, not argv"
    volumes = [str(v) for v in redis.get("volumes", [])]
    assert any(v.split(":")[1] == "/data" and v.split(":")[0] in compose.get("volumes", {}) for v in volumes)
    assert "healthcheck" in redis


def test_postgres_has_a_healthcheck(services: dict[str, dict[str, Any]]) -> None:
    postgres = services["postgres"]
    # 15: the version the test suite and CI run against (Debian bookworm's).
    assert str(postgres["image"]).startswith("postgres:15")
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])


def test_migrations_finish_before_any_app_service(services: dict[str, dict[str, Any]]) -> None:
    migrate = services["migrate"]
    assert _argv(migrate["command"]) == ["python", "-m", "models.migrate"]
    assert urlsplit(_environment(migrate)["DATABASE_URL"]).username == "quiz", "migrations run as the owner"
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


_REQUIRED = re.compile(r"\$\{(\w+):\?")
# Variables with a default must be settings an operator tunes, never a credential.
_WITH_DEFAULT = {"LOG_LEVEL", "LOG_FORMAT", "CORS_ORIGINS"}


def test_no_secret_has_a_default() -> None:
    text = COMPOSE_FILE.read_text()
    variables = {m.group("name"): m.group("op") or "" for m in _VARIABLE.finditer(text)}
    defaulted = {name for name, op in variables.items() if not op.endswith("?")}
    assert defaulted <= _WITH_DEFAULT, f"only non-secrets may have a default: {defaulted - _WITH_DEFAULT}"
    required = set(_REQUIRED.findall(text))
    assert {"ADMIN_TOKEN", "SECRET_KEY", "POSTGRES_PASSWORD", "APP_DB_PASSWORD", "REDIS_PASSWORD",
            "FLOWER_BASIC_AUTH"} <= required


def test_env_example_lists_every_variable() -> None:
    example = {line.split("=", 1)[0] for line in ENV_EXAMPLE.read_text().splitlines()
               if "=" in line and not line.lstrip().startswith("#")}
    used = {m.group("name") for m in _VARIABLE.finditer(COMPOSE_FILE.read_text())}
    assert used <= example, f"missing from .env.example: {sorted(used - example)}"
    for line in ENV_EXAMPLE.read_text().splitlines():
        name, _, value = line.partition("=")
        if name in set(_REQUIRED.findall(COMPOSE_FILE.read_text())):
            assert value == "", f"{name} must be empty in .env.example, so nobody deploys a published secret"


def test_every_service_is_supervised(services: dict[str, dict[str, Any]]) -> None:
    for name, spec in services.items():
        assert spec.get("init") is True, f"{name}: init, so SIGTERM reaches the process"
        assert spec["logging"]["options"]["max-size"], f"{name}: logs must rotate"
        if name == "migrate":
            assert spec["restart"] == "no"
            continue
        assert spec.get("restart") == "unless-stopped", name
        assert spec.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
        if name not in ("postgres", "redis"):
            assert spec.get("mem_limit"), f"{name} has no memory limit"


def test_flower_is_optional_and_has_a_login(services: dict[str, dict[str, Any]]) -> None:
    flower = services["flower"]
    assert flower["profiles"] == ["monitoring"]
    assert flower["environment"]["FLOWER_BASIC_AUTH"].startswith("${FLOWER_BASIC_AUTH:?")
    assert all(str(port).startswith("127.0.0.1:") for port in flower["ports"]), "Flower on loopback only"
