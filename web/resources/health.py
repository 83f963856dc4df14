"""Health, readiness and Prometheus metrics."""

from __future__ import annotations

import falcon
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, generate_latest
from sqlalchemy import func, select, text

from models.tables import Job
from web.auth import bearer, is_admin
from web.deps import Deps
from web.errors import Problem
from web.media import write_json
from workers.routing import all_queues


class Healthz:
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        write_json(resp, {"status": "ok"})


class Readyz:
    def __init__(self, deps: Deps) -> None:
        self.deps = deps

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
    """Global gauges read at scrape time, so every API process reports the same truth."""

    def __init__(self, deps: Deps) -> None:
        self.deps = deps

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
        registry = CollectorRegistry()
        jobs = Gauge("quiz_jobs", "Jobs by status", ["status"], registry=registry)
        depth = Gauge("quiz_queue_depth", "Messages waiting per Celery queue", ["queue"], registry=registry)
        with self.deps.sessions() as session:
            for status, count in session.execute(select(Job.status, func.count()).group_by(Job.status)):
                jobs.labels(status).set(count)
        pipe = self.deps.redis.pipeline(transaction=False)
        queues = all_queues(self.deps.settings)
        for queue in queues:
            pipe.llen(queue)
        for queue, length in zip(queues, pipe.execute(), strict=True):
            depth.labels(queue).set(length)
        resp.content_type = CONTENT_TYPE_LATEST
        resp.data = generate_latest(registry)
