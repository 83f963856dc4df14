"""Prometheus metrics of one realtime process, served at ``/metrics`` on its own port.

Each realtime process reports only itself (clients, emits, broadcasts), so Prometheus scrapes
every process; the series are summed or compared across them there.
"""

from __future__ import annotations

import contextlib
import hmac
import time
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)

from models.events import parse_iso
from settings import Settings

_LAG_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0)
_BROADCAST_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class RealtimeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        self.clients = Gauge("quiz_realtime_connected_clients", "Socket.IO clients connected to this process",
                             registry=self.registry)
        self.emits = Counter("quiz_realtime_emits", "Events this process handed to its clients, per emit "
                             "(one emit reaches every client of its rooms)", ["event"], registry=self.registry)
        self.deliveries = Counter("quiz_realtime_broadcast_recipients", "Clients reached by coalesced public "
                                  "broadcasts", ["event"], registry=self.registry)
        self.broadcast = Histogram("quiz_realtime_broadcast_seconds", "Time to hand one coalesced broadcast "
                                   "to every local client", buckets=_BROADCAST_BUCKETS, registry=self.registry)
        self.write = Histogram("quiz_realtime_broadcast_write_seconds", "Of a broadcast, the time to write it to "
                               "every local client (the reads before it excluded)", buckets=_BROADCAST_BUCKETS,
                               registry=self.registry)
        self.lag = Histogram("quiz_realtime_commit_to_emit_seconds", "From the commit of the (oldest) change "
                             "an event reports to its emit here", ["event"], buckets=_LAG_BUCKETS,
                             registry=self.registry)

    def emitted(self, event: str, at: str | None) -> None:
        self.emits.labels(event).inc()
        if at:
            with contextlib.suppress(ValueError):
                self.lag.labels(event).observe(max(0.0, time.time() - parse_iso(at).timestamp()))

    def render(self) -> bytes:
        return generate_latest(self.registry)


def authorised(settings: Settings, environ: dict[str, Any]) -> bool:
    """``Authorization: Bearer`` with ``METRICS_TOKEN`` (when set) or the admin token."""
    header = environ.get("HTTP_AUTHORIZATION", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        return False
    given = token.strip().encode()
    accepted = [t for t in (settings.metrics_token, settings.admin_token) if t]
    return any(hmac.compare_digest(given, t.encode()) for t in accepted)


def serve_metrics(metrics: RealtimeMetrics, settings: Settings, environ: dict[str, Any],
                  start_response: Any) -> list[bytes]:
    if not authorised(settings, environ):
        start_response("401 Unauthorized", [("Content-Type", "application/problem+json"),
                                            ("WWW-Authenticate", 'Bearer realm="metrics"')])
        return [b'{"type":"about:blank","title":"Unauthorized","status":401,'
                b'"detail":"send Authorization: Bearer <METRICS_TOKEN or ADMIN_TOKEN>"}']
    body = metrics.render()
    start_response("200 OK", [("Content-Type", CONTENT_TYPE_LATEST), ("Content-Length", str(len(body)))])
    return [body]
