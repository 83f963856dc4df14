"""Prometheus series of the consumers and the sweeper, kept in Redis and served by the API's ``/metrics``.

Why Redis and not an HTTP endpoint per process: a consumer is a Celery solo worker, one per queue,
and there may be dozens of them (``BOARD_QUEUES``) in containers or on one host. A port each would
have to be allocated, published and listed in Prometheus's configuration, and would change with
``BOARD_QUEUES``. Instead each consumer adds its batch's counts to a few Redis hashes in one
pipeline after the batch is announced, and one scrape of the API reads them all. The counts
outlive a consumer's restart (Prometheus sees no reset), and with many consumers they add up
exactly, since ``HINCRBY`` is atomic. A histogram is stored as per-bucket counts plus a sum, so the
API renders it cumulatively as Prometheus expects. If Redis loses its data the counters restart
from zero, which Prometheus's ``rate()`` reads as a counter reset.
"""

from __future__ import annotations

import bisect
import logging
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import redis
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

log = logging.getLogger(__name__)

_SEP = "|"
_SUM = "sum"


@dataclass(frozen=True)
class Series:
    name: str
    help: str
    type: Literal["counter", "gauge", "histogram"]
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()


_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

CONSUMER_JOBS = Series("quiz_consumer_jobs", "Jobs a consumer took, by queue, kind and outcome (succeeded, "
                       "failed, or retried: its savepoint failed and it stays queued)", "counter",
                       ("queue", "kind", "outcome"))
JOB_VISIBLE = Series("quiz_consumer_job_visible_seconds", "From a job's POST (createdAt) to the commit that made "
                     "its result visible (finishedAt), by kind", "histogram", ("kind",), _SECONDS)
JOB_RUN = Series("quiz_consumer_job_run_seconds", "Time a consumer spent applying one job's rule, by kind",
                 "histogram", ("kind",), (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0))
BATCH_SIZE = Series("quiz_consumer_batch_size", "Jobs applied in one consumer transaction, by queue", "histogram",
                    ("queue",), (1, 2, 5, 10, 20, 50, 100, 200, 500))
SWEEPS = Series("quiz_sweeper_sweeps", "Sweeps run, by outcome (ok, error)", "counter", ("outcome",))
RESENT = Series("quiz_sweeper_resent_jobs", "Unfinished jobs whose message the sweeper sent again", "counter")
RELEASES = Series("quiz_sweeper_release_jobs", "Release jobs the sweeper recorded for claims and mystery boxes "
                  "past their claim timeout", "counter")
PURGED = Series("quiz_sweeper_purged_jobs", "Finished jobs purged after JOB_RETENTION_SECONDS", "counter")
LAST_SWEEP = Series("quiz_sweeper_last_sweep_timestamp_seconds", "Unix time of the sweeper's last finished sweep "
                    "(an old value means the sweeper is not running)", "gauge")

SHARED: tuple[Series, ...] = (CONSUMER_JOBS, JOB_VISIBLE, JOB_RUN, BATCH_SIZE, SWEEPS, RESENT, RELEASES, PURGED,
                              LAST_SWEEP)


def _key(prefix: str, series: Series) -> str:
    return f"{prefix}:metrics:{series.name}"


class Tally:
    """Observations gathered in memory, then added to Redis in one pipeline (``flush``)."""

    def __init__(self) -> None:
        self.added: dict[tuple[Series, str], float] = defaultdict(float)
        self.gauges: dict[tuple[Series, str], float] = {}

    def inc(self, series: Series, labels: tuple[str, ...] = (), by: float = 1) -> None:
        self.added[series, _SEP.join(labels)] += by

    def observe(self, series: Series, labels: tuple[str, ...], value: float) -> None:
        # A bucket's own count (not cumulative): the first bucket whose bound is >= value, or +Inf.
        index = bisect.bisect_left(series.buckets, value)
        base = _SEP.join(labels)
        self.added[series, f"{base}{_SEP}{index}"] += 1
        self.added[series, f"{base}{_SEP}{_SUM}"] += value

    def set(self, series: Series, labels: tuple[str, ...], value: float) -> None:
        self.gauges[series, _SEP.join(labels)] = value

    def flush(self, client: redis.Redis, prefix: str) -> None:
        """Add everything to Redis. Metrics never fail the work they describe: errors are logged."""
        if not self.added and not self.gauges:
            return
        try:
            pipe = client.pipeline(transaction=False)
            self.queue(pipe, prefix)
            pipe.execute()
        except redis.RedisError:
            log.warning("could not record metrics", exc_info=True)

    def queue(self, pipe: Any, prefix: str) -> None:
        """Queue everything on a pipeline someone else executes (a consumer's last round trip)."""
        for (series, field), value in self.added.items():
            if field.endswith(_SEP + _SUM) or not float(value).is_integer():
                pipe.hincrbyfloat(_key(prefix, series), field, value)
            else:
                pipe.hincrby(_key(prefix, series), field, int(value))
        for (series, field), value in self.gauges.items():
            pipe.hset(_key(prefix, series), field, value)
        self.added.clear()
        self.gauges.clear()


def _family(series: Series, stored: dict[Any, Any]) -> Metric:
    values = {(k.decode() if isinstance(k, bytes) else k): float(v) for k, v in stored.items()}
    labels = list(series.labels)
    if series.type == "histogram":
        family: Metric = HistogramMetricFamily(series.name, series.help, labels=labels)
        grouped: dict[str, dict[str, float]] = defaultdict(dict)
        for field, value in values.items():
            base, _, part = field.rpartition(_SEP)
            grouped[base][part] = value
        for base, parts in sorted(grouped.items()):
            running = 0.0
            buckets = []
            for index, bound in enumerate((*series.buckets, float("inf"))):
                running += parts.get(str(index), 0.0)
                buckets.append(("+Inf" if bound == float("inf") else str(float(bound)), running))
            label_values = base.split(_SEP) if labels else []
            family.add_metric(label_values, buckets, parts.get(_SUM, 0.0))  # type: ignore[attr-defined]
        return family
    family = (CounterMetricFamily if series.type == "counter" else GaugeMetricFamily)(
        series.name, series.help, labels=labels)
    if not labels:
        # An unlabelled series is always there, 0 until it moves, so a dashboard and an alert see it.
        family.add_metric([], values.get("", 0.0))  # type: ignore[attr-defined]
        return family
    for field, value in sorted(values.items()):
        family.add_metric(field.split(_SEP), value)  # type: ignore[attr-defined]
    return family


def collect(client: redis.Redis, prefix: str, series: Iterable[Series] = SHARED) -> Iterator[Metric]:
    """The stored series as Prometheus metric families, read in one round trip."""
    series = list(series)
    pipe = client.pipeline(transaction=False)
    for s in series:
        pipe.hgetall(_key(prefix, s))
    for s, stored in zip(series, pipe.execute(), strict=True):
        yield _family(s, stored)
