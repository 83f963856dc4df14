"""The consumers' and the sweeper's series: what a tally stores in Redis and how the API renders it."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from models import metrics


class FakeRedis:
    """The hash commands a tally and a scrape use, pipelined, on a dict (HINCRBY's sums, HGETALL's bytes)."""

    def __init__(self) -> None:
        self.hashes: dict[str, dict[str, float]] = defaultdict(dict)
        self.queued: list[Any] = []

    def pipeline(self, transaction: bool = False) -> FakeRedis:
        return self

    def hincrby(self, key: str, field: str, value: float) -> None:
        self.queued.append(lambda: self.hashes[key].__setitem__(field, self.hashes[key].get(field, 0) + value))

    hincrbyfloat = hincrby

    def hset(self, key: str, field: str, value: float) -> None:
        self.queued.append(lambda: self.hashes[key].__setitem__(field, value))

    def hgetall(self, key: str) -> None:
        self.queued.append(lambda: {f.encode(): str(v).encode() for f, v in self.hashes[key].items()})

    def execute(self) -> list[Any]:
        done, self.queued = [call() for call in self.queued], []
        return done


def scrape(client: FakeRedis) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    class Stored(Collector):
        def collect(self) -> Any:
            return metrics.collect(client, "test")  # type: ignore[arg-type]

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Stored())
    text = generate_latest(registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_histograms_add_up_across_consumers_and_render_cumulatively() -> None:
    client = FakeRedis()
    # Two consumers' batches; a value on a bound belongs to that bucket (Prometheus's "le").
    for values in ((0.004, 0.005, 0.3), (70.0,)):
        tally = metrics.Tally()
        for value in values:
            tally.observe(metrics.JOB_VISIBLE, ("submit",), value)
        tally.flush(client, "test")  # type: ignore[arg-type]
    samples = scrape(client)

    def bucket(le: str) -> float:
        return samples["quiz_consumer_job_visible_seconds_bucket", (("kind", "submit"), ("le", le))]

    assert bucket("0.005") == 2
    assert bucket("0.25") == 2
    assert bucket("0.5") == 3
    assert bucket("60.0") == 3
    assert bucket("+Inf") == 4
    assert samples["quiz_consumer_job_visible_seconds_count", (("kind", "submit"),)] == 4
    assert abs(samples["quiz_consumer_job_visible_seconds_sum", (("kind", "submit"),)] - 70.309) < 1e-9


def test_counters_by_label_and_unlabelled_series_that_never_moved() -> None:
    client = FakeRedis()
    tally = metrics.Tally()
    tally.inc(metrics.CONSUMER_JOBS, ("board.0", "claim", "succeeded"), 3)
    tally.inc(metrics.CONSUMER_JOBS, ("board.0", "claim", "failed"))
    tally.set(metrics.LAST_SWEEP, (), 1700000000.5)
    tally.flush(client, "test")  # type: ignore[arg-type]
    samples = scrape(client)
    assert samples["quiz_consumer_jobs_total", (("kind", "claim"), ("outcome", "succeeded"), ("queue", "board.0"))] == 3
    assert samples["quiz_consumer_jobs_total", (("kind", "claim"), ("outcome", "failed"), ("queue", "board.0"))] == 1
    assert samples["quiz_sweeper_last_sweep_timestamp_seconds", ()] == 1700000000.5
    # Present at 0 before the first re-send, so a dashboard and an alert can rely on it.
    assert samples["quiz_sweeper_resent_jobs_total", ()] == 0
