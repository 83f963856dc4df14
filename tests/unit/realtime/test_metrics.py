"""Who may scrape a realtime process's /metrics."""

from __future__ import annotations

from realtime.metrics import authorised
from settings import Settings


def test_metrics_take_the_metrics_token_or_the_admin_token_as_a_bearer() -> None:
    settings = Settings.from_env({"ADMIN_TOKEN": "admin-token-0123456789", "METRICS_TOKEN": "scrape-me"})
    allowed = ["Bearer scrape-me", "bearer scrape-me", "Bearer admin-token-0123456789"]
    refused = ["", "Bearer", "Bearer ", "Bearer scrape-m", "Basic scrape-me", "scrape-me", "Bearer scrape-me2"]
    for header in allowed:
        assert authorised(settings, {"HTTP_AUTHORIZATION": header}), header
    for header in refused:
        assert not authorised(settings, {"HTTP_AUTHORIZATION": header}), header
    assert not authorised(settings, {})


def test_without_a_metrics_token_only_the_admin_token_scrapes() -> None:
    settings = Settings.from_env({"ADMIN_TOKEN": "admin-token-0123456789"})
    assert authorised(settings, {"HTTP_AUTHORIZATION": "Bearer admin-token-0123456789"})
    assert not authorised(settings, {"HTTP_AUTHORIZATION": "Bearer "})
