"""Sign-in rate limits in Redis (fixed windows per client address and per account).

When Redis cannot be reached the limiter fails open to an in-process limiter with the same
rules, and logs a warning: sign-in keeps working and is still limited, per process.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time

import redis

from control_plane.exceptions import RateLimited

log = logging.getLogger("magistrate.ratelimit")


class LocalWindows:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, tuple[int, float]] = {}

    def get(self, key: str) -> tuple[int, int]:
        with self._lock:
            count, reset_at = self._counts.get(key, (0, 0.0))
            now = time.monotonic()
            if reset_at <= now:
                return 0, 0
            return count, int(reset_at - now) + 1

    def incr(self, key: str, window: int, amount: int = 1) -> None:
        with self._lock:
            now = time.monotonic()
            count, reset_at = self._counts.get(key, (0, 0.0))
            if reset_at <= now:
                count, reset_at = 0, now + window
            self._counts[key] = (count + amount, reset_at)
            if len(self._counts) > 100_000:  # bounded memory under a flood
                self._counts = {k: v for k, v in self._counts.items() if v[1] > now}

    def delete(self, key: str) -> None:
        with self._lock:
            self._counts.pop(key, None)


class LoginRateLimiter:
    def __init__(self, client: redis.Redis, *, max_per_ip: int, max_per_account: int,
                 window_seconds: int) -> None:
        self.client = client
        self.max_per_ip = max_per_ip
        self.max_per_account = max_per_account
        self.window = window_seconds
        self.local = LocalWindows()
        self.degraded = False

    @staticmethod
    def _ip_key(ip: str) -> str:
        return f"magistrate:rl:login:ip:{ip}"

    @staticmethod
    def _account_key(account: str) -> str:
        digest = hashlib.sha256(account.strip().lower().encode()).hexdigest()[:32]
        return f"magistrate:rl:login:acct:{digest}"

    def _warn(self, exc: Exception) -> None:
        if not self.degraded:
            log.warning("Redis unreachable for sign-in rate limits (%s); using the in-process "
                        "limiter until it returns", type(exc).__name__)
        self.degraded = True

    def _get(self, key: str) -> tuple[int, int]:
        try:
            pipe = self.client.pipeline()
            pipe.get(key)
            pipe.ttl(key)
            raw, ttl = pipe.execute()
            self.degraded = False
            return int(raw or 0), max(int(ttl), 1)
        except redis.RedisError as exc:
            self._warn(exc)
            return self.local.get(key)

    def _incr(self, key: str) -> None:
        try:
            pipe = self.client.pipeline()
            pipe.set(key, 0, ex=self.window, nx=True)  # opens the window (Redis 6 and up)
            pipe.incr(key)
            pipe.execute()
        except redis.RedisError as exc:
            self._warn(exc)
            self.local.incr(key, self.window)

    def check(self, ip: str, account: str) -> None:
        """Count this attempt; raise RateLimited when the address or account is over its limit."""
        count, ttl = self._get(self._ip_key(ip))
        if count >= self.max_per_ip:
            raise RateLimited(ttl)
        count, ttl = self._get(self._account_key(account))
        if count >= self.max_per_account:
            raise RateLimited(ttl)
        self._incr(self._ip_key(ip))

    def record_failure(self, account: str) -> None:
        self._incr(self._account_key(account))

    def reset_account(self, account: str) -> None:
        key = self._account_key(account)
        try:
            self.client.delete(key)
        except redis.RedisError as exc:
            self._warn(exc)
        self.local.delete(key)
