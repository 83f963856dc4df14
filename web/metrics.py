"""The API's own Prometheus series: requests by route template and status, latency by route.

Under gunicorn every worker process counts its own requests, and a scrape reaches only one of
them, so the series live in prometheus_client's multiprocess files (``PROMETHEUS_MULTIPROC_DIR``,
made fresh per start by ``web/gunicorn_conf.py``) and a scrape sums every worker's files. Without
that folder (the app built in a test process) they live in this process's registry.
"""

from __future__ import annotations

import time
from typing import Any

import falcon
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.multiprocess import MultiProcessCollector

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0)

# Created once per process, at import: in multiprocess mode each is backed by this pid's files.
_REGISTRY = CollectorRegistry()
REQUESTS = Counter("quiz_http_requests", "HTTP requests answered, by route template, method and status",
                   ["route", "method", "status"], registry=_REGISTRY)
LATENCY = Histogram("quiz_http_request_duration_seconds", "Time from the request's arrival in the app to its "
                    "response, by route template and method", ["route", "method"], buckets=_LATENCY_BUCKETS,
                    registry=_REGISTRY)


def request_registry(multiproc_dir: str) -> CollectorRegistry:
    """The registry a scrape renders the request series from: every worker's files, or this process's."""
    if not multiproc_dir:
        return _REGISTRY
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=multiproc_dir)
    return registry


class RequestMetrics:
    """Middleware (first in the chain, so its response hook runs last and times everything)."""

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        req.context.metrics_started = time.perf_counter()

    def process_response(self, req: falcon.Request, resp: falcon.Response, resource: Any,
                         req_succeeded: bool) -> None:
        started = getattr(req.context, "metrics_started", None)
        if started is None:
            return
        # The template, never the path: a path per team or job would be a series per team or job.
        route = req.uri_template or ("static" if resource is None and resp.status_code < 400 else "unmatched")
        method = req.method if req.method in _METHODS else "OTHER"
        REQUESTS.labels(route, method, str(resp.status_code)).inc()
        LATENCY.labels(route, method).observe(time.perf_counter() - started)


_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
