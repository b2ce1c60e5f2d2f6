"""Per-tenant gateway rate limits: requests and tokens per minute, in fixed one-minute windows
in Redis. When Redis cannot be reached the limits fail open to an in-process limiter with the
same rules (per process, so looser by the number of web processes) and a warning is logged once
until Redis answers again: the gateway keeps serving, still limited."""

from __future__ import annotations

import logging
import time

import redis

from control_plane.auth.ratelimit import LocalWindows
from control_plane.exceptions import RateLimited
from tenant_runtime.observability import metrics

log = logging.getLogger("magistrate.gateway.ratelimit")
WINDOW = 60


class GatewayRateLimited(RateLimited):
    def __init__(self, retry_after: int, what: str, limit: int) -> None:
        super().__init__(retry_after, f"This tenant's gateway limit of {limit:,} {what} per "
                                      f"minute is reached; retry in {max(1, retry_after)} s.")


class GatewayRateLimiter:
    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self.local = LocalWindows()
        self.degraded = False

    def _counts(self, keys: list[tuple[str, int]]) -> list[int]:
        """Add each amount to its key's window and return the new totals."""
        try:
            pipe = self.client.pipeline(transaction=False)
            for key, amount in keys:
                pipe.incrby(key, amount)
                pipe.expire(key, WINDOW * 2)
            totals = pipe.execute()[::2]
            if self.degraded:
                log.warning("Redis answers again; gateway rate limits are shared again")
            self.degraded = False
            return [int(total) for total in totals]
        except redis.RedisError as exc:
            metrics.RATE_LIMIT_FALLBACKS.labels("gateway").inc()
            if not self.degraded:
                log.warning("Redis unreachable for gateway rate limits (%s); using the "
                            "in-process limiter until it returns", type(exc).__name__)
            self.degraded = True
            out = []
            for key, amount in keys:
                self.local.incr(key, WINDOW, amount)
                out.append(self.local.get(key)[0])
            return out

    def check(self, tenant_id: int, *, tokens: int, requests_per_minute: int,
              tokens_per_minute: int, now: float | None = None) -> None:
        """Count one request of about ``tokens`` tokens; raise GatewayRateLimited when the
        tenant is over either limit in this minute."""
        moment = time.time() if now is None else now
        window = int(moment // WINDOW)
        retry_after = min(WINDOW, max(1, int((window + 1) * WINDOW - moment) + 1))
        base = f"magistrate:rl:gw:{tenant_id}:{window}"
        requests, used = self._counts([(f"{base}:req", 1), (f"{base}:tok", max(tokens, 1))])
        if requests > requests_per_minute or used > tokens_per_minute:
            metrics.refused("rate_limit")
        if requests > requests_per_minute:
            raise GatewayRateLimited(retry_after, "requests", requests_per_minute)
        if used > tokens_per_minute:
            raise GatewayRateLimited(retry_after, "tokens", tokens_per_minute)
