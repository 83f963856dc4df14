"""Fixed-window rate limits in Redis, per team token and per client address, on writes."""

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


class RateLimiter:
    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.redis = client
        self.prefix = prefix

    def hit(self, limits: list[tuple[str, int]], window: int) -> tuple[str, float] | None:
        """Count one event against each (key, limit) in one round trip.

        Returns the first exceeded key and the seconds until its window resets, or None.
        """
        active = [(key, limit) for key, limit in limits if limit > 0]
        if not active:
            return None
        now = time.time()
        bucket = int(now // window)
        pipe = self.redis.pipeline(transaction=False)
        for key, _ in active:
            name = f"{self.prefix}:rl:{key}:{bucket}"
            pipe.incr(name)
            pipe.expire(name, window * 2)
        counts = pipe.execute()[::2]
        for (key, limit), count in zip(active, counts, strict=True):
            if count > limit:
                return key, (bucket + 1) * window - now
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

    def process_resource(self, req: falcon.Request, resp: falcon.Response, resource: Any,
                         params: dict[str, Any]) -> None:
        if req.method not in WRITES or resource is None:
            return
        header = req.get_header("Authorization") or ""
        token = header[7:].strip() if header[:7].lower() == "bearer " else ""
        if token and is_admin(token, self.settings.admin_token):
            return
        window = self.settings.rate_limit_window
        limits = [(f"ip:{req.remote_addr}", self.settings.rate_limit_ip)]
        if token:
            limits.append((f"team:{token_hash(token).hex()[:32]}", self.settings.rate_limit_team))
        try:
            exceeded = self.limiter.hit(limits, window)
        except redis.RedisError:
            # Limits fail open: a Redis blip must not lock every team out.
            log.warning("rate limiter unavailable", exc_info=True)
            return
        if exceeded is not None:
            key, wait = exceeded
            if key.startswith("ip:"):
                raise too_many(wait, f"at most {self.settings.rate_limit_ip} writes per {window} s from one address")
            raise too_many(wait, f"at most {self.settings.rate_limit_team} writes per {window} s per team")
