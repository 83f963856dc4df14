"""The leaderboard cache's scripts, called by SHA on a consumer's pipeline, after Redis forgot them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from models.live import Live, Standing
from settings import Settings


def test_a_pipeline_of_scripts_runs_them_again_once_redis_has_forgotten_them(test_env: dict[str, str]) -> None:
    live = Live(Settings.from_env({**test_env, "REDIS_PREFIX": "live-scripts-test"}))
    start = datetime.now(UTC)
    try:
        live.rebuild(1, [Standing(1, "Ada", 1100, 1, start)])
        # What a Redis restart does to its script cache (FLUSHDB keeps scripts).
        live.redis.script_flush()
        pipe = live.redis.pipeline(transaction=False)
        pipe.incr("live-scripts-test:published")
        live.update(1, [Standing(2, "Bob", 1000, 1, start + timedelta(seconds=1))], pipe)
        live.queue_rank(1, 2, pipe)
        # The command before the scripts ran once; the scripts were loaded and ran after it.
        assert live.execute(pipe) == [1, 1, 1]
        assert live.top(1, 5) == [{"rank": 1, "teamName": "Ada", "points": 1100},
                                  {"rank": 2, "teamName": "Bob", "points": 1000}]
    finally:
        live.clear(1)
        live.redis.delete("live-scripts-test:published")
        live.redis.close()
