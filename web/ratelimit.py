"""Fixed-window rate limits in Redis: writes and reads per team token and per client address,
and registrations per client address (a window of their own)."""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import falcon
import redis

from settings import Settings
from web.auth import is_admin, token_hash
from web.errors import Problem

log = logging.getLogger(__name__)

WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
READS = frozenset({"GET", "HEAD"})
# Probes and the API's own documents: cheap, and a probe must not be refused for being frequent.
UNLIMITED_PATHS = ("/healthz", "/readyz", "/metrics", "/openapi.json", "/docs")


class RateLimiter:
    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.redis = client
        self.prefix = prefix

    def hit(self, limits: list[tuple[str, int, int]]) -> tuple[str, float] | None:
        """Count one event against each (key, limit, window) in one round trip.

        Returns the first exceeded key and the seconds until its window resets, or None.
        """
        active = [(key, limit, window) for key, limit, window in limits if limit > 0]
        if not active:
            return None
        now = time.time()
        pipe = self.redis.pipeline(transaction=False)
        for key, _, window in active:
            name = f"{self.prefix}:rl:{key}:{int(now // window)}"
            pipe.incr(name)
            pipe.expire(name, window * 2)
        counts = pipe.execute()[::2]
        for (key, limit, window), count in zip(active, counts, strict=True):
            if count > limit:
                return key, (int(now // window) + 1) * window - now
        return None


def too_many(retry_after: float, detail: str) -> Problem:
    seconds = max(1, math.ceil(retry_after))
    return Problem(falcon.HTTP_429, "too-many-requests", "Too many requests", detail,
                   headers={"Retry-After": str(seconds)}, extra={"retryAfter": seconds})


class RateLimits:
    """Falcon middleware: runs after routing, so unknown paths are not counted."""

    def __init__(self, settings: Settings, limiter: RateLimiter) -> None:
        self.settings = settings
        self.limiter = limiter
        s = settings
        # With every limit of a kind off (a benchmark, a trusted LAN), its requests skip the token
        # hashing and key building too, not only the Redis round trip.
        self.methods = (
            (WRITES if s.rate_limit_ip or s.rate_limit_team or s.rate_limit_register_ip else frozenset())
            | (READS if s.rate_limit_read_ip or s.rate_limit_read_team else frozenset())
        )

    def process_resource(self, req: falcon.Request, resp: falcon.Response, resource: Any,
                         params: dict[str, Any]) -> None:
        if resource is None or req.method not in self.methods or req.path.startswith(UNLIMITED_PATHS):
            return
        header = req.get_header("Authorization") or ""
        token = header[7:].strip() if header[:7].lower() == "bearer " else ""
        if token and is_admin(token, self.settings.admin_token):
            return
        s = self.settings
        window = s.rate_limit_window
        ip = req.remote_addr
        if req.method in READS:
            kind = "reads"
            limits = [(f"rip:{ip}", s.rate_limit_read_ip, window)]
            if token:
                limits.append((f"rteam:{token_hash(token).hex()[:32]}", s.rate_limit_read_team, window))
        else:
            kind = "writes"
            limits = [(f"ip:{ip}", s.rate_limit_ip, window)]
            if token:
                limits.append((f"team:{token_hash(token).hex()[:32]}", s.rate_limit_team, window))
            if req.method == "POST" and getattr(resource, "registers_teams", False):
                limits.append((f"reg:{ip}", s.rate_limit_register_ip, s.rate_limit_register_window))
        try:
            exceeded = self.limiter.hit(limits)
        except redis.RedisError:
            # Limits fail open: a Redis blip must not lock every team out.
            log.warning("rate limiter unavailable", exc_info=True)
            return
        if exceeded is not None:
            key, wait = exceeded
            if key.startswith("reg:"):
                raise too_many(wait, f"at most {s.rate_limit_register_ip} registrations per "
                                     f"{s.rate_limit_register_window} s from one address")
            if key.startswith(("ip:", "rip:")):
                limit = s.rate_limit_ip if kind == "writes" else s.rate_limit_read_ip
                raise too_many(wait, f"at most {limit} {kind} per {window} s from one address")
            limit = s.rate_limit_team if kind == "writes" else s.rate_limit_read_team
            raise too_many(wait, f"at most {limit} {kind} per {window} s per team")
