"""Every process kind's Prometheus series, scraped after a small game, and the dashboard that uses them.

The API serves its own series (summed over its gunicorn workers) and, from Redis, the consumers'
and the sweeper's (models/metrics.py); each realtime process serves its own.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.orm import sessionmaker

from models.broker import producer
from models.live import Live
from settings import Settings
from tests.support import ADMIN_TOKEN, Api, Db, Listener, Stack, answer_of, questions, unique
from workers.sweeper import Sweeper

DASHBOARD = Path(__file__).resolve().parents[2] / "docs" / "grafana-dashboard.json"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str) -> Samples:
    resp = requests.get(url + "/metrics", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=10)
    assert resp.status_code == 200, resp.text
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(resp.text) for s in family.samples}


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


def names(samples: Iterable[Samples]) -> set[str]:
    return {name for s in samples for name, _ in s}


def play(api: Api, listen: object, slug: str) -> None:
    api.add_questions(slug, questions(2))
    team = api.register(slug, unique("owls"))
    own: Listener = listen(slug, token=team.token)  # type: ignore[operator]
    for code in ("Q1", "Q2"):
        assert api.claim(slug, team.token, code)["status"] == "succeeded"
        assert api.submit(slug, team.token, code, answer_of(code))["result"]["correct"]
    own.wait_event("score_update")


def sweep(settings: Settings, db: Db) -> None:
    sender = producer(settings)
    sweeper = Sweeper(settings, sessionmaker(db.engine), Live(settings), sender)
    try:
        sweeper.sweep_once()
    finally:
        sweeper.live.redis.close()
        sender.close()


def test_each_process_kind_reports_and_its_series_move(api: Api, listen: object, stack: Stack, settings: Settings,
                                                       db: Db) -> None:
    api_before, realtime_before = scrape(stack.api_url), scrape(stack.realtime_url)
    slug = api.create_competition(unique("metrics"))["slug"]
    play(api, listen, slug)
    # Reads on fresh connections, several at once, so more than one gunicorn worker serves them:
    # the scrape, answered by one worker, must count them all.
    reads = 40
    url = f"{stack.api_url}/api/v1/competitions/{slug}/leaderboard"
    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda _: requests.get(url, timeout=30).status_code, range(reads)))
    assert statuses == [200] * reads
    sweep(settings, db)
    api_after, realtime_after = scrape(stack.api_url), scrape(stack.realtime_url)

    def moved(before: Samples, after: Samples, name: str, by: float = 1, **labels: str) -> None:
        grown = total(after, name, **labels) - total(before, name, **labels)
        assert grown >= by, f"{name}{labels} moved by {grown}, expected >= {by}"

    # API: requests by route template and status, latency by route, over every worker.
    leaderboard = "/api/v1/competitions/{slug}/leaderboard"
    moved(api_before, api_after, "quiz_http_requests_total", reads, route=leaderboard, method="GET", status="200")
    moved(api_before, api_after, "quiz_http_request_duration_seconds_count", reads, route=leaderboard, method="GET")
    moved(api_before, api_after, "quiz_http_requests_total", 2, route="/api/v1/competitions/{slug}/claims",
          method="POST")
    assert not [ls for (n, ls) in api_after if n == "quiz_http_requests_total" and slug in dict(ls)["route"]]

    # Consumers, aggregated in Redis: jobs by kind and outcome, the two histograms, batch sizes.
    moved(api_before, api_after, "quiz_consumer_jobs_total", 1, kind="register", outcome="succeeded",
          queue="registrations")
    moved(api_before, api_after, "quiz_consumer_jobs_total", 2, kind="claim", outcome="succeeded")
    moved(api_before, api_after, "quiz_consumer_jobs_total", 2, kind="submit", outcome="succeeded")
    moved(api_before, api_after, "quiz_consumer_job_visible_seconds_count", 2, kind="submit")
    moved(api_before, api_after, "quiz_consumer_job_run_seconds_count", 2, kind="claim")
    moved(api_before, api_after, "quiz_consumer_batch_size_count", 1, queue="registrations")
    assert total(api_after, "quiz_consumer_job_visible_seconds_bucket", kind="submit", le="+Inf") == \
        total(api_after, "quiz_consumer_job_visible_seconds_count", kind="submit")
    # Queue depth and the age of the oldest waiting job, for every queue, waiting or not.
    for queue in ("registrations", "board.0", "board.3", "competition.0"):
        assert ("quiz_queue_jobs_waiting", frozenset({("queue", queue)})) in api_after
        assert ("quiz_queue_oldest_job_age_seconds", frozenset({("queue", queue)})) in api_after

    # Sweeper, aggregated in Redis like the consumers.
    moved(api_before, api_after, "quiz_sweeper_sweeps_total", 1, outcome="ok")
    assert total(api_after, "quiz_sweeper_last_sweep_timestamp_seconds") > \
        total(api_before, "quiz_sweeper_last_sweep_timestamp_seconds")
    for name in ("quiz_sweeper_resent_jobs_total", "quiz_sweeper_release_jobs_total", "quiz_sweeper_purged_jobs_total"):
        assert (name, frozenset()) in api_after

    # Realtime: its own port.
    moved(realtime_before, realtime_after, "quiz_realtime_emits_total", 1, event="job_update")
    moved(realtime_before, realtime_after, "quiz_realtime_commit_to_emit_seconds_count", 1, event="score_update")
    assert ("quiz_realtime_connected_clients", frozenset()) in realtime_after

    # Every series the dashboard queries is in some scrape.
    dashboard = json.loads(DASHBOARD.read_text())
    queried = {name for panel in dashboard["panels"] for target in panel["targets"]
               for name in re.findall(r"\bquiz_[a-z0-9_]+", target["expr"])}
    assert queried, "the dashboard queries nothing"
    missing = queried - names([api_after, realtime_after])
    assert not missing, f"the dashboard queries series no process serves: {sorted(missing)}"
