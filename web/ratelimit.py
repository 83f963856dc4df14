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

    def hit(self, key: str, limit: int, window: int) -> float | None:
        """Count one event; the seconds until the window resets if the limit is exceeded."""
        if limit <= 0:
            return None
        now = time.time()
        bucket = int(now // window)
        name = f"{self.prefix}:rl:{key}:{bucket}"
        pipe = self.redis.pipeline(transaction=False)
        pipe.incr(name)
        pipe.expire(name, window * 2)
        count = pipe.execute()[0]
        if count > limit:
            return (bucket + 1) * window - now
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
        try:
            wait = self.limiter.hit(f"ip:{req.remote_addr}", self.settings.rate_limit_ip, window)
            if wait is not None:
                raise too_many(wait, f"at most {self.settings.rate_limit_ip} writes per {window} s from one address")
            if token:
                wait = self.limiter.hit(f"team:{token_hash(token).hex()[:32]}", self.settings.rate_limit_team, window)
                if wait is not None:
                    raise too_many(wait, f"at most {self.settings.rate_limit_team} writes per {window} s per team")
        except redis.RedisError:
            # Limits fail open: a Redis blip must not lock every team out.
            log.warning("rate limiter unavailable", exc_info=True)

