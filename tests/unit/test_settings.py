"""Settings.from_env: defaults, parsing and the configurations it refuses."""

from __future__ import annotations

import pytest

from settings import DEV_ADMIN_TOKEN, Settings, SettingsError


def test_empty_environment_gives_the_defaults() -> None:
    settings = Settings.from_env({})
    defaults = Settings()
    for name in ("database_url", "redis_url", "api_port", "api_workers", "api_threads", "realtime_port",
                 "realtime_async_mode", "broadcast_interval", "sweep_interval", "sweep_after", "redis_prefix",
                 "cors_origins", "log_level", "max_body_bytes", "environment"):
        assert getattr(settings, name) == getattr(defaults, name), name
    assert settings.admin_token == DEV_ADMIN_TOKEN
    assert settings.board_queues == 4
    assert settings.mystery_shards == 1
    assert not settings.production


def test_only_the_given_mapping_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BOARD_QUEUES", "9")
    assert Settings.from_env({}).board_queues == 4
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
        "MYSTERY_SHARDS": "2",
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
    assert (settings.board_queues, settings.mystery_shards) == (8, 2)
    assert (settings.api_port, settings.api_workers, settings.api_threads) == (9000, 5, 12)
    assert settings.realtime_port == 9001
    assert settings.realtime_async_mode == "threading"
    assert settings.log_level == "DEBUG"
    assert settings.broadcast_interval == 0.5
    assert (settings.sweep_interval, settings.sweep_after) == (2.0, 7.5)
    assert settings.cors_origins == ("https://a.example", "https://b.example")
    assert settings.redis_prefix == "quizz"
    assert settings.environment == "staging"


def test_empty_values_mean_the_default() -> None:
    settings = Settings.from_env({"BOARD_QUEUES": "", "BROADCAST_INTERVAL": "", "ADMIN_TOKEN": ""})
    assert settings.board_queues == 4
    assert settings.broadcast_interval == 0.25
    assert settings.admin_token == DEV_ADMIN_TOKEN


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("BOARD_QUEUES", "four"),
        ("BOARD_QUEUES", "0"),
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
    settings = Settings.from_env({"QUIZ_ENV": "production", "ADMIN_TOKEN": "x" * 16})
    assert settings.production
    assert settings.admin_token == "x" * 16


def test_settings_error_is_a_value_error() -> None:
    assert issubclass(SettingsError, ValueError)


def test_with_overrides_returns_a_copy() -> None:
    settings = Settings()
    changed = settings.with_overrides(sweep_after=1.0, board_queues=2)
    assert (changed.sweep_after, changed.board_queues) == (1.0, 2)
    assert (settings.sweep_after, settings.board_queues) == (15.0, 4)
