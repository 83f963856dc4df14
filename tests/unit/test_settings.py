"""Settings.from_env: defaults, parsing and the configurations it refuses."""

from __future__ import annotations

import pytest

from settings import DEV_ADMIN_TOKEN, DEV_SECRET_KEY, Settings, SettingsError

STRONG = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"


def test_empty_environment_gives_the_defaults() -> None:
    settings = Settings.from_env({})
    defaults = Settings()
    for name in ("database_url", "redis_url", "api_port", "api_workers", "api_threads", "realtime_port",
                 "realtime_async_mode", "broadcast_interval", "sweep_interval", "sweep_after", "redis_prefix",
                 "cors_origins", "log_level", "max_body_bytes", "environment"):
        assert getattr(settings, name) == getattr(defaults, name), name
    assert settings.admin_token == DEV_ADMIN_TOKEN
    assert settings.board_queues == 2
    assert settings.competition_queues == 1
    assert not settings.production


def test_only_the_given_mapping_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BOARD_QUEUES", "9")
    assert Settings.from_env({}).board_queues == 2
    assert Settings.from_env().board_queues == 9


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgres://u:p@db:5432/quiz", "postgresql+psycopg://u:p@db:5432/quiz"),
        ("postgresql://u@db/quiz", "postgresql+psycopg://u@db/quiz"),
        ("postgresql+psycopg://u@db/quiz", "postgresql+psycopg://u@db/quiz"),
    ],
)
def test_database_url_uses_psycopg3(given: str, expected: str) -> None:
    assert Settings.from_env({"DATABASE_URL": given}).database_url == expected


def test_values_are_parsed() -> None:
    settings = Settings.from_env({
        "DATABASE_URL": "postgresql://postgres@127.0.0.1/x",
        "REDIS_URL": "redis://r:6379/3",
        "ADMIN_TOKEN": "secret",
        "BOARD_QUEUES": "8",
        "COMPETITION_QUEUES": "2",
        "API_PORT": "9000",
        "API_WORKERS": "5",
        "API_THREADS": "12",
        "REALTIME_PORT": "9001",
        "REALTIME_ASYNC_MODE": "threading",
        "LOG_LEVEL": "debug",
        "BROADCAST_INTERVAL": "0.5",
        "SWEEP_INTERVAL": "2",
        "SWEEP_AFTER": "7.5",
        "CORS_ORIGINS": " https://a.example , ,https://b.example,",
        "REDIS_PREFIX": "quizz",
        "QUIZ_ENV": "staging",
    })
    assert settings.redis_url == "redis://r:6379/3"
    assert settings.admin_token == "secret"
    assert (settings.board_queues, settings.competition_queues) == (8, 2)
    assert (settings.api_port, settings.api_workers, settings.api_threads) == (9000, 5, 12)
    assert settings.realtime_port == 9001
    assert settings.realtime_async_mode == "threading"
    assert settings.log_level == "DEBUG"
    assert settings.broadcast_interval == 0.5
    assert (settings.sweep_interval, settings.sweep_after) == (2.0, 7.5)
    assert settings.cors_origins == ("https://a.example", "https://b.example")
    assert settings.redis_prefix == "quizz"
    assert settings.environment == "staging"


def test_the_old_name_of_competition_queues_is_still_read() -> None:
    assert Settings.from_env({"MYSTERY_SHARDS": "3"}).competition_queues == 3
    assert Settings.from_env({"MYSTERY_SHARDS": "3", "COMPETITION_QUEUES": "2"}).competition_queues == 2


def test_empty_values_mean_the_default() -> None:
    settings = Settings.from_env({"BOARD_QUEUES": "", "BROADCAST_INTERVAL": "", "ADMIN_TOKEN": ""})
    assert settings.board_queues == 2
    assert settings.broadcast_interval == 0.15
    assert settings.admin_token == DEV_ADMIN_TOKEN


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("BOARD_QUEUES", "four"),
        ("BOARD_QUEUES", "0"),
        ("COMPETITION_QUEUES", "0"),
        ("MYSTERY_SHARDS", "0"),
        ("API_PORT", "-1"),
        ("API_WORKERS", "1.5"),
        ("MAX_BODY_BYTES", "100"),
        ("BROADCAST_INTERVAL", "fast"),
        ("REALTIME_ASYNC_MODE", "asyncio"),
    ],
)
def test_bad_values_are_refused(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name):
        Settings.from_env({name: value})


@pytest.mark.parametrize(("name", "value"), [("SWEEP_INTERVAL", "-1"), ("SWEEP_AFTER", "nan"),
                                             ("BROADCAST_INTERVAL", "-0.5")])
def test_intervals_must_be_finite_and_not_negative(name: str, value: str) -> None:
    # A negative or NaN SWEEP_INTERVAL makes the sweeper loop without pausing; a negative
    # SWEEP_AFTER re-sends every job the moment it is queued.
    with pytest.raises(SettingsError, match=name):
        Settings.from_env({name: value})


def test_production_needs_a_long_admin_token() -> None:
    with pytest.raises(SettingsError, match="ADMIN_TOKEN"):
        Settings.from_env({"QUIZ_ENV": "production"})
    with pytest.raises(SettingsError, match="16"):
        Settings.from_env({"QUIZ_ENV": "production", "ADMIN_TOKEN": "short"})
    settings = Settings.from_env({"QUIZ_ENV": "production", "ADMIN_TOKEN": "x" * 16, "SECRET_KEY": STRONG})
    assert settings.production
    assert settings.admin_token == "x" * 16


def test_settings_error_is_a_value_error() -> None:
    assert issubclass(SettingsError, ValueError)


def test_with_overrides_returns_a_copy() -> None:
    settings = Settings()
    changed = settings.with_overrides(sweep_after=1.0, board_queues=3)
    assert (changed.sweep_after, changed.board_queues) == (1.0, 3)
    assert (settings.sweep_after, settings.board_queues) == (15.0, 2)


def test_production_needs_a_strong_secret_key_of_its_own() -> None:
    base = {"QUIZ_ENV": "production", "ADMIN_TOKEN": "a-long-organiser-token-0123"}
    with pytest.raises(SettingsError, match="SECRET_KEY must be set"):
        Settings.from_env(base)
    for weak in ("short", "a" * 64, "0101010101010101010101010101010101010101", "changeme-changeme-changeme-1234567",
                 DEV_SECRET_KEY):
        with pytest.raises(SettingsError, match="SECRET_KEY"):
            Settings.from_env({**base, "SECRET_KEY": weak})
    with pytest.raises(SettingsError, match="differ from ADMIN_TOKEN"):
        Settings.from_env({**base, "ADMIN_TOKEN": STRONG, "SECRET_KEY": STRONG})
    assert Settings.from_env({**base, "SECRET_KEY": STRONG}).secret_key == STRONG
    # Outside production the development key stands in, and is never the admin token.
    assert Settings.from_env({}).secret_key == DEV_SECRET_KEY != DEV_ADMIN_TOKEN
    with pytest.raises(SettingsError, match="production"):
        Settings.from_env({**base, "SECRET_KEY": STRONG, "ADMIN_TOKEN": DEV_ADMIN_TOKEN})


@pytest.mark.parametrize("variable", ["API_HOST", "REALTIME_HOST"])
def test_the_development_admin_token_only_works_on_loopback(variable: str) -> None:
    for host in ("0.0.0.0", "192.168.1.20", "quiz.example"):
        with pytest.raises(SettingsError, match="ADMIN_TOKEN must be set"):
            Settings.from_env({variable: host})
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        assert Settings.from_env({variable: host}).admin_token == DEV_ADMIN_TOKEN
    # With a token of one's own, any address will do.
    assert Settings.from_env({variable: "0.0.0.0", "ADMIN_TOKEN": "organisers-own"}).admin_token == "organisers-own"


def test_new_limits_and_retention_are_read() -> None:
    settings = Settings.from_env({
        "RATE_LIMIT_READ_IP": "7", "RATE_LIMIT_READ_TEAM": "6", "RATE_LIMIT_REGISTER_IP": "5",
        "RATE_LIMIT_REGISTER_WINDOW": "60", "JOB_RETENTION_SECONDS": "3600", "METRICS_TOKEN": "scrape-me",
        "APP_DATABASE_URL": "postgresql://quiz_app@db/quiz",
    })
    assert (settings.rate_limit_read_ip, settings.rate_limit_read_team) == (7, 6)
    assert (settings.rate_limit_register_ip, settings.rate_limit_register_window) == (5, 60)
    assert (settings.job_retention_seconds, settings.metrics_token) == (3600, "scrape-me")
    assert settings.app_database == "postgresql+psycopg://quiz_app@db/quiz"
    assert Settings.from_env({}).app_database == Settings.from_env({}).database_url
    with pytest.raises(SettingsError, match="JOB_RETENTION_SECONDS"):
        Settings.from_env({"JOB_RETENTION_SECONDS": "5"})


def test_the_api_worker_class_sets_how_many_requests_may_wait() -> None:
    assert Settings.from_env({}).api_worker_class == "gevent"
    assert Settings.from_env({}).wait_capacity == 750
    assert Settings.from_env({"API_WORKER_CONNECTIONS": "100"}).wait_capacity == 75
    assert Settings.from_env({"API_WORKER_CLASS": "gthread", "API_THREADS": "16"}).wait_capacity == 12
    assert Settings.from_env({"API_WORKER_CLASS": "gthread", "MAX_WAITERS": "5"}).wait_capacity == 5
    with pytest.raises(SettingsError, match="API_WORKER_CLASS"):
        Settings.from_env({"API_WORKER_CLASS": "sync"})
