"""Health, readiness and Prometheus metrics."""

from __future__ import annotations

from collections.abc import Iterator

import falcon
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from models import metrics as shared
from models.kinds import all_queues
from models.tables import Job
from web.auth import bearer, is_admin
from web.deps import Deps
from web.errors import Problem
from web.media import write_json
from web.metrics import request_registry
from web.transactions import reads


class Healthz:
    @reads
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        write_json(resp, {"status": "ok"})


class Readyz:
    def __init__(self, deps: Deps) -> None:
        self.deps = deps

    @reads
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        checks = {}
        try:
            with self.deps.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            checks["database"] = "ok"
        except Exception as exc:
            checks["database"] = f"unavailable: {type(exc).__name__}"
        try:
            self.deps.redis.ping()
            checks["redis"] = "ok"
        except Exception as exc:
            checks["redis"] = f"unavailable: {type(exc).__name__}"
        if any(v != "ok" for v in checks.values()):
            raise Problem(falcon.HTTP_503, "service-unavailable", "Service unavailable",
                          "a dependency is unreachable", headers={"Retry-After": "5"}, extra={"checks": checks})
        write_json(resp, {"status": "ready", "checks": checks})


class Metrics:
    """Everything Prometheus needs from one scrape of any API process.

    - the API's request series, summed over every gunicorn worker (``web/metrics.py``);
    - global gauges read at scrape time (jobs by status, broker messages, waiting jobs and the age
      of the oldest per queue), so every API process reports the same truth;
    - the consumers' and the sweeper's series, which they keep in Redis (``models/metrics.py``).
    """

    def __init__(self, deps: Deps) -> None:
        self.deps = deps

    @reads
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        # Queue depths and job counts tell an attacker how busy (and how attackable) the event is.
        token = bearer(req)
        settings = self.deps.settings
        allowed = is_admin(token, settings.admin_token) or (
            bool(settings.metrics_token) and is_admin(token, settings.metrics_token))
        if not allowed:
            raise Problem(falcon.HTTP_401, "unauthorized", "Authentication required",
                          "/metrics needs METRICS_TOKEN (or the organiser token) as a Bearer token",
                          headers={"WWW-Authenticate": 'Bearer realm="metrics"'})
        registry = CollectorRegistry(auto_describe=False)
        families = [*self._global(req.context.session), *shared.collect(self.deps.redis, settings.redis_prefix)]
        registry.register(_Collected(families))
        resp.content_type = CONTENT_TYPE_LATEST
        resp.data = generate_latest(request_registry(settings.prometheus_multiproc_dir)) + generate_latest(registry)

    def _global(self, session: Session) -> Iterator[Metric]:
        # Families, not Gauge objects: in multiprocess mode a Gauge would write files of its own.
        jobs = GaugeMetricFamily("quiz_jobs", "Jobs by status", labels=["status"])
        queues = all_queues(self.deps.settings)
        waiting = GaugeMetricFamily("quiz_queue_jobs_waiting", "Jobs recorded and not yet taken, per queue "
                                    "(the backlog in PostgreSQL)", labels=["queue"])
        oldest = GaugeMetricFamily("quiz_queue_oldest_job_age_seconds", "Age of the oldest job not yet taken, per "
                                   "queue; 0 when none waits", labels=["queue"])
        for status, count in session.execute(select(Job.status, func.count()).group_by(Job.status)):
            jobs.add_metric([status], count)
        rows = {queue: (count, age) for queue, count, age in session.execute(_WAITING)}
        for queue in queues:
            count, age = rows.get(queue, (0, 0.0))
            waiting.add_metric([queue], count)
            oldest.add_metric([queue], float(age or 0.0))
        depth = GaugeMetricFamily("quiz_queue_depth", "Messages waiting per Celery queue in the broker: one "
                                  "per job, those of jobs a batch has already applied included until acked",
                                  labels=["queue"])
        pipe = self.deps.redis.pipeline(transaction=False)
        for queue in queues:
            pipe.llen(queue)
        for queue, length in zip(queues, pipe.execute(), strict=True):
            depth.add_metric([queue], length)
        yield from (jobs, waiting, oldest, depth)


# The partial index ix_jobs_queued_by_queue covers it: only queued jobs are read.
_WAITING = (
    select(Job.queue, func.count(), func.extract("epoch", func.clock_timestamp() - func.min(Job.created_at)))
    .where(Job.status == "queued")
    .group_by(Job.queue)
)


class _Collected(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)
